//! Child processes a test started, ended by PID on drop.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// A process this test bed started; killed (by its PID) and reaped on drop.
pub struct Proc {
    child: Child,
    stdout: BufReader<ChildStdout>,
    stdin: Option<ChildStdin>,
    what: String,
}

impl Proc {
    /// Starts `program args…` inside network namespace `netns`, first moving
    /// it into the cgroup whose `cgroup.procs` is given, if any. The process
    /// joins the cgroup before it runs anything of its own.
    pub fn spawn_in(
        netns: &str,
        cgroup_procs: Option<&Path>,
        program: &Path,
        args: &[&str],
    ) -> Result<Self> {
        let mut cmd = Command::new("sh");
        die_with_parent(&mut cmd);
        let mut script = String::new();
        if let Some(procs) = cgroup_procs {
            script.push_str(&format!("echo $$ > '{}' && ", procs.display()));
        }
        script.push_str("exec ip netns exec \"$@\"");
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .arg(netns)
            .arg(program)
            .args(args);
        let what = format!("{} {} (in {netns})", program.display(), args.join(" "));
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Self::adopt(child, what)
    }

    /// Starts `program args…` here (root network namespace, own cgroup),
    /// its stderr appended to `log`.
    pub fn spawn_logged(program: &Path, args: &[String], log: &Path) -> Result<Self> {
        let what = format!("{} {}", program.display(), args.join(" "));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = Command::new(program);
        die_with_parent(&mut cmd);
        let child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Self::adopt(child, what)
    }

    fn adopt(mut child: Child, what: String) -> Result<Self> {
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdout,
            stdin,
            what,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to this process (by its PID) and waits for it to end.
    pub fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
        timeout: std::time::Duration,
    ) -> Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, signal)?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("{} did not end within {timeout:?} of {signal}", self.what);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Reads one line of output; fails if the process ended instead.
    pub fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("{} ended ({status}) before printing a line", self.what);
        }
        Ok(line.trim_end().to_owned())
    }

    pub fn write_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the process to end on its own and returns all it printed.
    pub fn finish(mut self) -> Result<String> {
        drop(self.stdin.take());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stdout, &mut rest)?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("{} failed ({status})", self.what);
        }
        Ok(rest)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process a test starts must not outlive the test if it is killed: the
/// kernel ends it when the thread that started it goes (`sh -c … exec`
/// keeps the setting across the exec).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec here.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Path of a binary built alongside the running one (`netprobe`,
/// `switchyard`): next to it, or one directory up from `deps/`.
pub fn sibling_binary(name: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?;
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "`{name}` is not built next to {}; build the workspace first",
        exe.display()
    )
}
