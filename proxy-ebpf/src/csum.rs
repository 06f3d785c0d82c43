//! Whole-buffer Internet checksums for headers the TC path builds itself.
use aya_ebpf::helpers::bpf_csum_diff;

/// A stack buffer `bpf_csum_diff` can read: 4-byte aligned, length a
/// multiple of 4.
#[repr(C, align(4))]
pub struct Words<const N: usize>(pub [u8; N]);

/// The Internet checksum of `buf`, ready to store as native-order bytes.
#[inline(always)]
pub fn checksum<const N: usize>(buf: &mut Words<N>) -> [u8; 2] {
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            buf.0.as_mut_ptr().cast(),
            N as u32,
            0,
        )
    };
    let mut c = sum as u64 & 0xffff_ffff;
    c = (c & 0xffff) + (c >> 16);
    c = (c & 0xffff) + (c >> 16);
    (!(c as u16)).to_ne_bytes()
}
