//! One writer per pin root. The daemon, `switchyard attach`, `apply-file`
//! and `cleanup` each allocate frontend and backend IDs from what they read
//! of the maps; two at once would hand out the same IDs. The writer takes
//! an exclusive `flock` on the pin root directory for as long as it writes
//! (the daemon: its whole life); the kernel drops it when the process ends,
//! however it ends. `inspect` only reads, and takes no lock.
use std::{
    fs::File,
    path::Path,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use super::loader::{Error, Result, ensure_pin_dir};

/// The pin root's writer lock, released on drop.
pub struct PinRootLock {
    _lock: Flock<File>,
}

impl PinRootLock {
    /// Takes the lock, waiting up to `wait` for another writer to finish
    /// (a daemon being replaced in a rolling update ends within its grace
    /// period). Fails naming the pin root when it stays taken.
    pub fn acquire(pin_root: &Path, wait: Duration) -> Result<Self> {
        ensure_pin_dir(pin_root)?;
        let open = || {
            File::open(pin_root).map_err(|source| Error::PinDir {
                path: pin_root.display().to_string(),
                source,
            })
        };
        let deadline = Instant::now() + wait;
        let mut dir = open()?;
        loop {
            match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Self { _lock: lock }),
                Err((_, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                    dir = open()?;
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(Error::PinRootBusy {
                        path: pin_root.display().to_string(),
                    });
                }
                Err((_, errno)) => {
                    return Err(Error::PinDir {
                        path: pin_root.display().to_string(),
                        source: errno.into(),
                    });
                }
            }
        }
    }
}
