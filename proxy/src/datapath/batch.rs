//! `BPF_MAP_UPDATE_BATCH` (Linux 5.6+): many entries of one map in one
//! system call. aya 0.14 has no batch operations, so this is the one place
//! that calls `bpf(2)` directly.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::MapData;

/// `enum bpf_cmd` value of `BPF_MAP_UPDATE_BATCH` (include/uapi/linux/bpf.h).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Why a batch stopped.
#[derive(Debug)]
pub enum BatchError {
    /// The kernel (or this map type) has no batch update: write one by one.
    Unsupported,
    /// An entry could not be written; the ones before it were.
    Failed(io::Error),
}

/// Writes `keys[i] → values[i]` (`BPF_ANY`) in order, in one call. Returns
/// how many entries were written, and why it stopped early.
///
/// # Panics
/// If `keys` and `values` differ in length.
pub fn update<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> (usize, Result<(), BatchError>) {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return (0, Ok(()));
    }
    let Ok(count) = u32::try_from(keys.len()) else {
        return (0, Err(BatchError::Unsupported));
    };
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the
    // kernel reads `count` keys and values from the slices, which live
    // through the call, and writes back only `attr.count`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc == 0 {
        return (keys.len(), Ok(()));
    }
    let err = io::Error::last_os_error();
    let done = (attr.count as usize).min(keys.len());
    // ENOTSUPP (524) is the kernel's own "not supported" code.
    let unsupported = matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | 524)
    );
    if unsupported && done == 0 {
        (0, Err(BatchError::Unsupported))
    } else {
        (done, Err(BatchError::Failed(err)))
    }
}
