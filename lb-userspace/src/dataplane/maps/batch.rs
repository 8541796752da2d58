//! Batched map operations (`BPF_MAP_*_BATCH`, kernel 5.6), which aya 0.14 does not offer: one
//! system call reads, writes or deletes thousands of entries, where aya's per-key calls take
//! one or two each.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Result, bail};
use aya::{Pod, maps::MapData};

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries asked for per lookup call. Must be at least the longest hash bucket.
const LOOKUP_CHUNK: usize = 4_096;

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

/// The member of `union bpf_attr` for one element (`BPF_MAP_*_ELEM`).
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `bpf_attr` members this module passes.
trait Attr {}
impl Attr for BatchAttr {}
impl Attr for ElemAttr {}

fn call<A: Attr>(command: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` member whose pointers the callers keep alive for
    // the call, with the counts of their buffers.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *mut A, size_of::<A>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn fd(map: &MapData) -> u32 {
    map.fd().as_fd().as_raw_fd() as u32
}

/// Writes `keys[i] -> values[i]` for every `i` with one `BPF_MAP_UPDATE_BATCH`. On error, says
/// how many were written.
pub(super) fn update<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd(map),
        ..BatchAttr::default()
    };
    if let Err(error) = call(BPF_MAP_UPDATE_BATCH, &mut attr) {
        bail!(
            "BPF_MAP_UPDATE_BATCH of {} entries: {error}; {} were written",
            keys.len(),
            attr.count
        );
    }
    Ok(())
}

/// Every entry of a hash map, read with `BPF_MAP_LOOKUP_BATCH` (a snapshot per bucket: entries
/// added or removed while it runs may or may not be seen, as with any iteration).
pub(super) fn lookup_all<K: Pod + Default, V: Pod + Default>(map: &MapData) -> Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    let mut keys = vec![K::default(); LOOKUP_CHUNK];
    let mut values = vec![V::default(); LOOKUP_CHUNK];
    // The position token is opaque (a bucket index for hash maps); key-sized and at least 8
    // bytes is always enough.
    let token_len = size_of::<K>().max(8);
    let mut token_in = vec![0u8; token_len];
    let mut token_out = vec![0u8; token_len];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: LOOKUP_CHUNK as u32,
            map_fd: fd(map),
            ..BatchAttr::default()
        };
        let result = call(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = attr.count as usize;
        entries.extend(
            keys[..got]
                .iter()
                .copied()
                .zip(values[..got].iter().copied()),
        );
        match result {
            Ok(()) => {}
            // ENOENT: that was the last batch.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(entries),
            Err(error) => bail!("BPF_MAP_LOOKUP_BATCH: {error}"),
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}

/// Elements `first..first + count` of a per-CPU array of `u64`, read with one
/// `BPF_MAP_LOOKUP_BATCH`: element `i`'s value on CPU `c` is at `i * cpus + c`, `cpus` being
/// the possible CPUs (the kernel's stride for per-CPU values of 8 bytes).
pub(super) fn lookup_percpu_range(map: &MapData, first: u32, count: u32) -> Result<Vec<u64>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let cpus = aya::util::nr_cpus().map_err(|(what, error)| anyhow::anyhow!("{what}: {error}"))?;
    let mut keys = vec![0u32; count as usize];
    let mut values = vec![0u64; count as usize * cpus];
    // An array's batch starts after the key given (none: at element 0).
    let before = first.wrapping_sub(1);
    let mut token_out = 0u32;
    let mut attr = BatchAttr {
        in_batch: if first == 0 {
            0
        } else {
            &before as *const u32 as u64
        },
        out_batch: &mut token_out as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count,
        map_fd: fd(map),
        ..BatchAttr::default()
    };
    match call(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(()) => {}
        // ENOENT: the range reached the array's last element.
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
        Err(error) => bail!("BPF_MAP_LOOKUP_BATCH of elements {first}..+{count}: {error}"),
    }
    if attr.count != count || keys.first() != Some(&first) {
        bail!(
            "BPF_MAP_LOOKUP_BATCH of elements {first}..+{count} read {} from {:?}",
            attr.count,
            keys.first()
        );
    }
    Ok(values)
}

/// Deletes `keys` with `BPF_MAP_DELETE_BATCH`; keys that are no longer there (an LRU map may
/// have evicted them) are skipped. Returns how many were deleted.
pub(super) fn delete<K: Pod>(map: &MapData, keys: &[K]) -> Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: fd(map),
            ..BatchAttr::default()
        };
        let result = call(BPF_MAP_DELETE_BATCH, &mut attr);
        let done = attr.count as usize;
        deleted += done;
        match result {
            Ok(()) => return Ok(deleted),
            // The key after the `done` deleted ones is gone already: skip it.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                rest = &rest[(done + 1).min(rest.len())..];
            }
            Err(error) => bail!("BPF_MAP_DELETE_BATCH: {error}"),
        }
    }
    Ok(deleted)
}

/// Deletes one element (aya 0.14 cannot delete from an array of maps): `Ok(false)` if it was
/// not there.
pub(super) fn delete_one<K: Pod>(map: &MapData, key: &K) -> Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd(map),
        key: key as *const K as u64,
        ..ElemAttr::default()
    };
    match call(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(error) => bail!("BPF_MAP_DELETE_ELEM: {error}"),
    }
}
