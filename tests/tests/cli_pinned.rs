//! The `switchyard` command line against pinned state on a bpffs: attach,
//! apply-file (good and bad files), a second start that adopts the pinned
//! maps while connections stay up, inspect, and cleanup.
use std::{path::PathBuf, process::Command};

use serde_json::Value;
use testbed::{
    fs::PrivateBpffs,
    lab::{ClientPlacement, Testbed},
    privileges,
    probe::Outcome,
    proc::sibling_binary,
};

struct Cli {
    bin: PathBuf,
    pin_root: PathBuf,
}

impl Cli {
    /// The built `switchyard`, with its pins on `bpffs`.
    fn new(bpffs: &PrivateBpffs) -> Self {
        Self {
            bin: sibling_binary("switchyard").unwrap(),
            pin_root: bpffs.path().join("switchyard"),
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .arg("--pin-root")
            .arg(&self.pin_root)
            .args(args)
            .output()
            .expect("run switchyard")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "switchyard {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn attach(&self, bed: &Testbed) {
        let mut args = vec![
            "attach",
            "--cgroup-path",
            bed.cgroup.path().to_str().unwrap(),
            "--tc-netns",
            bed.topo.node.name(),
        ];
        for iface in bed.topo.host_ifs() {
            args.extend(["--tc-iface", iface]);
        }
        // Small maps: tests run side by side.
        args.extend([
            "--max-conntrack",
            "16384",
            "--max-sockets",
            "4096",
            "--max-affinity",
            "4096",
        ]);
        self.ok(&args);
    }

    fn services(&self) -> Value {
        serde_json::from_str(&self.ok(&["inspect", "services", "--json"])).unwrap()
    }
}

fn write_table(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn attach_apply_restart_inspect_cleanup() {
    privileges::require();
    let bed = Testbed::new(3).unwrap();
    let bpffs = PrivateBpffs::new(&bed.prefix).unwrap();
    let cli = Cli::new(&bpffs);
    let dir = tempdir(&bed.prefix);

    cli.attach(&bed);
    let good = write_table(
        &dir,
        "good.yaml",
        &format!(
            "frontends:\n  - name: default/web:http\n    address: 10.96.0.10\n    port: 80\n    backends: [{}, {}, {}]\n",
            bed.backend(1),
            bed.backend(2),
            bed.backend(3)
        ),
    );
    cli.ok(&["apply-file", good.to_str().unwrap()]);
    let out = bed
        .client(
            ClientPlacement::InNodeCgroup,
            &["tcp", "--target", "10.96.0.10:80", "--count", "60"],
        )
        .unwrap();
    assert_eq!((out.error_count(), out.counts().len()), (0, 3), "{out:?}");

    // A bad file names every bad entry and field, and changes nothing.
    let before = cli.services();
    let bad = write_table(
        &dir,
        "bad.yaml",
        "frontends:\n  - {name: ok, address: 10.96.0.20, port: 80, backends: [10.244.1.11:8080]}\n  - {name: web, address: 10.96.0.300, port: 80}\n  - {name: zero, address: 10.96.0.21, port: 0}\n  - {name: proto, address: 10.96.0.22, port: 80, protocol: GRE}\n  - {name: again, address: 10.96.0.20, port: 80}\n",
    );
    let out = cli.run(&["apply-file", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "frontends[1] (web).address: `10.96.0.300` is not an IPv4 address",
        "frontends[2] (zero).port: port 0 is not a valid port",
        "frontends[3] (proto).protocol: unknown protocol `GRE`",
        "frontends[4] (again).address: duplicate frontend 10.96.0.20:80/TCP",
        "nothing was applied",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    assert_eq!(
        cli.services(),
        before,
        "a rejected file must not change the maps"
    );

    // Connections through both datapaths stay up while a second process
    // attaches again (an upgrade): it adopts the pinned maps, including the
    // TC path's conntrack, which the outside-cgroup flows need for replies.
    let mut sock_held = bed
        .spawn_client(
            ClientPlacement::InNodeCgroup,
            &["hold", "--target", "10.96.0.10:80", "--count", "10"],
        )
        .unwrap();
    let mut tc_held = bed
        .spawn_client(
            ClientPlacement::OutsideCgroup,
            &["hold", "--target", "10.96.0.10:80", "--count", "10"],
        )
        .unwrap();
    let sock_before: Outcome = serde_json::from_str(&sock_held.read_line().unwrap()).unwrap();
    let tc_before: Outcome = serde_json::from_str(&tc_held.read_line().unwrap()).unwrap();
    assert_eq!(sock_before.error_count() + tc_before.error_count(), 0);
    let tracked: Vec<Value> =
        serde_json::from_str(&cli.ok(&["inspect", "conntrack", "--json"])).unwrap();
    assert_eq!(
        tracked.len(),
        10,
        "the TC path tracks the outside-cgroup flows: {tracked:?}"
    );

    cli.attach(&bed);
    assert_eq!(
        cli.services(),
        before,
        "the second start kept the programmed frontends"
    );
    for (held, before) in [(&mut sock_held, &sock_before), (&mut tc_held, &tc_before)] {
        held.write_line("check").unwrap();
        let check: Outcome = serde_json::from_str(&held.read_line().unwrap()).unwrap();
        assert_eq!(
            check.error_count(),
            0,
            "a connection broke across the restart: {check:?}"
        );
        assert_eq!(check.answers, before.answers);
    }
    let links = std::fs::read_dir(cli.pin_root.join("links"))
        .unwrap()
        .count();
    assert_eq!(
        links,
        4 + 4 * 2,
        "four socket hooks and four interfaces (ingress and egress), each pinned once"
    );
    let out = bed
        .client(
            ClientPlacement::OutsideCgroup,
            &["tcp", "--target", "10.96.0.10:80", "--count", "30"],
        )
        .unwrap();
    assert_eq!(out.error_count(), 0, "{out:?}");

    let services = cli.services();
    assert_eq!(services[0]["frontend"], "10.96.0.10:80/TCP");
    assert_eq!(services[0]["backends"].as_array().unwrap().len(), 3);
    let table = cli.ok(&["inspect", "backends"]);
    assert!(table.contains("10.244.1.12:8080/TCP"), "{table}");
    drop((sock_held, tc_held));

    // Cleanup detaches everything: the frontend is no longer translated.
    cli.ok(&["cleanup"]);
    assert!(!cli.pin_root.exists());
    let out = bed
        .client(
            ClientPlacement::InNodeCgroup,
            &["tcp", "--target", "10.96.0.10:80", "--count", "1"],
        )
        .unwrap();
    assert_eq!(
        out.answers.len(),
        0,
        "still translated after cleanup: {out:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn apply_file_without_attach_says_what_to_do() {
    privileges::require();
    let prefix = testbed::unique_prefix();
    let bpffs = PrivateBpffs::new(&prefix).unwrap();
    let cli = Cli::new(&bpffs);
    let dir = tempdir(&prefix);
    let f = write_table(
        &dir,
        "t.yaml",
        "frontends:\n  - {address: 10.96.0.10, port: 80}\n",
    );
    let out = cli.run(&["apply-file", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run `switchyard attach` first"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{prefix}-files"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn attach_refuses_a_pinned_map_of_another_layout() {
    privileges::require();
    let prefix = testbed::unique_prefix();
    let bpffs = PrivateBpffs::new(&prefix).unwrap();
    let cli = Cli::new(&bpffs);
    let maps = cli.pin_root.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    // A conntrack map of another layout under this version's name.
    let stale = maps.join("SY_CT4_V2");
    let made = Command::new("bpftool")
        .args([
            "map",
            "create",
            stale.to_str().unwrap(),
            "type",
            "lru_hash",
            "key",
            "16",
            "value",
            "8",
            "entries",
            "64",
            "name",
            "SY_CT4_V2",
        ])
        .status()
        .expect("bpftool (installed by scripts/setup.sh)");
    assert!(made.success());
    let cgroup = testbed::fs::Cgroup::new(&prefix).unwrap();
    let out = cli.run(&["attach", "--cgroup-path", cgroup.path().to_str().unwrap()]);
    assert!(!out.status.success(), "adopted a map of another layout");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SY_CT4_V2")
            && err.contains("8-byte values")
            && err.contains("32-byte values"),
        "{err}"
    );
    // Every pin is checked before anything is created or attached.
    assert!(!maps.join("SY_LB4_SVC_V2").exists(), "no map was created");
    assert!(!cli.pin_root.join("links").exists(), "nothing was attached");
}

/// `bpftool map create` of a pinned map, then `update`s with hex bytes.
fn pinned_map(
    path: &std::path::Path,
    kind: &str,
    key: usize,
    value: usize,
    entries: &[(&str, &str)],
) {
    let name = path.file_name().unwrap().to_str().unwrap();
    let (k, v) = (key.to_string(), value.to_string());
    let made = Command::new("bpftool")
        .args([
            "map",
            "create",
            path.to_str().unwrap(),
            "type",
            kind,
            "key",
            &k,
            "value",
            &v,
            "entries",
            "64",
            "name",
            name,
        ])
        .status()
        .unwrap();
    assert!(made.success(), "bpftool map create {name}");
    for (key, value) in entries {
        let mut args = vec![
            "map",
            "update",
            "pinned",
            path.to_str().unwrap(),
            "key",
            "hex",
        ];
        args.extend(key.split_whitespace());
        args.extend(["value", "hex"]);
        args.extend(value.split_whitespace());
        assert!(
            Command::new("bpftool")
                .args(&args)
                .status()
                .unwrap()
                .success(),
            "update {name}"
        );
    }
}

#[test]
fn an_upgrade_carries_the_previous_layouts_over() {
    privileges::require();
    let prefix = testbed::unique_prefix();
    let bpffs = PrivateBpffs::new(&prefix).unwrap();
    let cli = Cli::new(&bpffs);
    let maps = cli.pin_root.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    // What version 1 pinned for 10.96.0.10:80/TCP → 10.244.1.11:8080, and
    // one per-packet flow from 10.244.1.10:40000 through it.
    let master = "0a 60 00 0a 00 50 00 00 06 00 00 00";
    let slot1 = "0a 60 00 0a 00 50 01 00 06 00 00 00";
    pinned_map(
        &maps.join("SY_LB4_SVC"),
        "hash",
        12,
        16,
        &[
            (master, "00 00 00 00 01 00 00 00 00 00 00 00 01 00 00 00"),
            (slot1, "01 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00"),
        ],
    );
    pinned_map(
        &maps.join("SY_LB4_BE"),
        "hash",
        4,
        8,
        &[("01 00 00 00", "0a f4 01 0b 1f 90 06 00")],
    );
    // An earlier attempt was interrupted after carrying the slot over: the
    // upgrade resumes rather than leaving the frontend without its master.
    pinned_map(
        &maps.join("SY_LB4_SVC_V2"),
        "hash",
        12,
        20,
        &[(
            slot1,
            "01 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
        )],
    );
    pinned_map(
        &maps.join("SY_LB4_AFFM"),
        "hash",
        8,
        1,
        &[("01 00 00 00 01 00 00 00", "01")],
    );
    let zero8 = "00 00 00 00 00 00 00 00";
    pinned_map(
        &maps.join("SY_CT4"),
        "lru_hash",
        16,
        24,
        &[
            (
                "0a f4 01 0a 0a 60 00 0a 9c 40 00 50 06 00 00 00",
                &format!("0a f4 01 0b 1f 90 00 00 01 00 00 00 01 00 00 00 {zero8}"),
            ),
            (
                "0a f4 01 0b 0a f4 01 0a 1f 90 9c 40 06 01 00 00",
                &format!("0a 60 00 0a 00 50 00 00 01 00 00 00 01 00 00 00 {zero8}"),
            ),
        ],
    );
    let cgroup = testbed::fs::Cgroup::new(&prefix).unwrap();
    cli.ok(&["attach", "--cgroup-path", cgroup.path().to_str().unwrap()]);
    let services: Value =
        serde_json::from_str(&cli.ok(&["inspect", "services", "--json"])).unwrap();
    assert_eq!(services[0]["frontend"], "10.96.0.10:80/TCP", "{services}");
    assert_eq!(services[0]["kind"], "ClusterIP");
    assert_eq!(services[0]["backends"][0], "10.244.1.11:8080/TCP");
    let flows: Value = serde_json::from_str(&cli.ok(&["inspect", "conntrack", "--json"])).unwrap();
    assert_eq!(flows.as_array().unwrap().len(), 1, "{flows}");
    assert_eq!(flows[0]["client"], "10.244.1.10:40000");
    assert_eq!(flows[0]["backend"], "10.244.1.11:8080");
    assert_eq!(flows[0]["state"], "established");
    for old in ["SY_LB4_SVC", "SY_LB4_AFFM", "SY_CT4"] {
        assert!(!maps.join(old).exists(), "{old} is left behind");
    }
    // The reconciler adopts the carried-over frontend under its old ID.
    let table = std::env::temp_dir().join(format!("{prefix}-upgrade.yaml"));
    std::fs::write(
        &table,
        "frontends:\n  - {address: 10.96.0.10, port: 80, backends: [10.244.1.11:8080]}\n",
    )
    .unwrap();
    cli.ok(&["apply-file", table.to_str().unwrap()]);
    let again: Value = serde_json::from_str(&cli.ok(&["inspect", "services", "--json"])).unwrap();
    assert_eq!(again[0]["id"], services[0]["id"]);
    let _ = std::fs::remove_file(&table);
    cli.ok(&["cleanup"]);
}

#[test]
fn a_failed_link_replacement_keeps_the_old_program_and_one_writer_at_a_time() {
    privileges::require();
    let bed = Testbed::new(2).unwrap();
    let bpffs = PrivateBpffs::new(&bed.prefix).unwrap();
    let cli = Cli::new(&bpffs);
    let dir = tempdir(&bed.prefix);
    cli.attach(&bed);
    let table = write_table(
        &dir,
        "web.yaml",
        &format!(
            "frontends:\n  - {{address: 10.96.0.10, port: 80, backends: [{}, {}]}}\n",
            bed.backend(1),
            bed.backend(2)
        ),
    );
    cli.ok(&["apply-file", table.to_str().unwrap()]);
    let traffic = |what: &str| {
        for placement in [
            ClientPlacement::InNodeCgroup,
            ClientPlacement::OutsideCgroup,
        ] {
            let out = bed
                .client(
                    placement,
                    &["tcp", "--target", "10.96.0.10:80", "--count", "20"],
                )
                .unwrap();
            assert_eq!(out.error_count(), 0, "{what}, {placement:?}: {out:?}");
        }
    };
    traffic("before");
    let mut held = bed
        .spawn_client(
            ClientPlacement::InNodeCgroup,
            &["hold", "--target", "10.96.0.10:80", "--count", "5"],
        )
        .unwrap();
    let held_before: Outcome = serde_json::from_str(&held.read_line().unwrap()).unwrap();

    // Pinning the replacement of one hook fails (something sits where its
    // new pin is staged): the attach fails, naming the pin, and the old
    // programs keep serving.
    let blocker = cli.pin_root.join("pinning").join("cgroup-connect4");
    std::fs::create_dir_all(&blocker).unwrap();
    let out = cli.run(&[
        "attach",
        "--cgroup-path",
        bed.cgroup.path().to_str().unwrap(),
        "--tc-netns",
        bed.topo.node.name(),
        "--tc-iface",
        "h0",
        "--max-conntrack",
        "16384",
        "--max-sockets",
        "4096",
        "--max-affinity",
        "4096",
    ]);
    assert!(
        !out.status.success(),
        "the injected pin failure went unnoticed"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cgroup-connect4"), "{err}");
    assert!(
        cli.pin_root.join("links/cgroup-connect4").exists(),
        "the old pin stays"
    );
    traffic("after the failed replacement");
    held.write_line("check").unwrap();
    let check: Outcome = serde_json::from_str(&held.read_line().unwrap()).unwrap();
    assert_eq!(
        check.answers, held_before.answers,
        "held connections unharmed"
    );
    std::fs::remove_dir(&blocker).unwrap();
    cli.attach(&bed);
    traffic("after a good replacement");

    // One writer at a time: while another process holds the pin root,
    // apply-file, attach and cleanup refuse, naming it, and change nothing.
    let before = cli.services();
    let lock =
        switchyard::datapath::lock::PinRootLock::acquire(&cli.pin_root, std::time::Duration::ZERO)
            .unwrap();
    for args in [vec!["apply-file", table.to_str().unwrap()], vec!["cleanup"]] {
        let out = cli.run(&args);
        assert!(!out.status.success(), "{args:?} ran beside another writer");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("in use by another switchyard process"),
            "{err}"
        );
    }
    assert_eq!(cli.services(), before);
    drop(lock);
    cli.ok(&["apply-file", table.to_str().unwrap()]);
    drop(held);
    cli.ok(&["cleanup"]);
}
