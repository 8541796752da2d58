//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! Words are 16-bit values loaded from the packet in the machine's native byte order, and the
//! checksum field is loaded the same way. The one's-complement sum is independent of byte order
//! (RFC 1071 §2(B)), so an update computed on native-order words and stored back in native
//! order is correct on any host, with no byte swaps on the hot path.

/// The one's-complement sum of `words` (native order, as loaded), unfolded: a header's sum
/// before [`fold`], for headers built whole (an encapsulation's, an ICMP error's).
#[inline(always)]
pub fn sum_words<const N: usize>(words: &[u16; N]) -> u32 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < N {
        sum += words[i] as u32;
        i += 1;
    }
    sum
}

/// Folds a 32-bit one's-complement accumulator into 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds `new - old` for one 16-bit word to an accumulator (RFC 1624 eqn. 3: `~m + m'`).
#[inline(always)]
const fn add_diff16(acc: u32, old: u16, new: u16) -> u32 {
    acc + (!old) as u32 + new as u32
}

/// Returns checksum `check` updated for one 16-bit word changing from `old` to `new`.
#[inline(always)]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(add_diff16((!check) as u32, old, new))
}

/// Returns checksum `check` updated for a 4-byte field changing from `old` to `new`, both
/// loaded in native order. (Its two halves are the field's two native-order 16-bit words,
/// whatever the machine's byte order.)
#[inline(always)]
pub const fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let mut acc = (!check) as u32;
    acc = add_diff16(acc, old as u16, new as u16);
    acc = add_diff16(acc, (old >> 16) as u16, (new >> 16) as u16);
    !fold(acc)
}

/// Returns checksum `check` updated for a 16-byte field (an IPv6 address) changing, given as
/// four native-order words.
#[inline(always)]
pub const fn replace128(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    let mut acc = (!check) as u32;
    // Eight additions of at most 2 * 0xffff each cannot overflow 32 bits.
    let mut i = 0;
    while i < 4 {
        acc = add_diff16(acc, old[i] as u16, new[i] as u16);
        acc = add_diff16(acc, (old[i] >> 16) as u16, (new[i] >> 16) as u16);
        i += 1;
    }
    !fold(acc)
}

/// The one's-complement difference of a 16-byte field changing from `old` to `new` (native
/// words), as a 32-bit partial sum: what `bpf_l4_csum_replace` takes in its "diff" form (a
/// header-field size of 0), and what `bpf_csum_diff(old, 16, new, 16, 0)` returns.
#[inline(always)]
pub const fn diff128(old: &[u32; 4], new: &[u32; 4]) -> u32 {
    let mut acc: u64 = 0;
    let mut i = 0;
    while i < 4 {
        acc += (!old[i]) as u64 + new[i] as u64;
        i += 1;
    }
    // Eight 32-bit terms: two folds bring the carries back into 32 bits.
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc as u32
}

/// The folded one's-complement difference of a 16-bit word changing from `old` to `new`
/// (`~m + m'`): what [`apply`] adds to a checksum covering the word.
#[inline(always)]
pub const fn delta16(old: u16, new: u16) -> u16 {
    fold(add_diff16(0, old, new))
}

/// [`delta16`] for a 4-byte field (native-order word).
#[inline(always)]
pub const fn delta32(old: u32, new: u32) -> u16 {
    fold(add_diff16(
        add_diff16(0, old as u16, new as u16),
        (old >> 16) as u16,
        (new >> 16) as u16,
    ))
}

/// [`delta16`] for a 16-byte field (four native-order words).
#[inline(always)]
pub const fn delta128(old: &[u32; 4], new: &[u32; 4]) -> u16 {
    fold(diff128(old, new))
}

/// The delta of the opposite change: the one's complement of `delta` (from `new` back to
/// `old`, `~m' + m`).
#[inline(always)]
pub const fn negate(delta: u16) -> u16 {
    !delta
}

/// The folded one's-complement sum of two deltas: the delta of both changes.
#[inline(always)]
pub const fn add(a: u16, b: u16) -> u16 {
    fold(a as u32 + b as u32)
}

/// Returns checksum `check` updated by a delta (RFC 1624 eqn. 3, `HC' = ~(~HC + delta)`), the
/// delta being one of [`delta16`], [`delta32`], [`delta128`] or their [`add`].
#[inline(always)]
pub const fn apply(check: u16, delta: u16) -> u16 {
    !fold((!check) as u32 + delta as u32)
}

/// The delta of an IPv4 TTL decremented by one, in the native-order word it shares with the
/// protocol (the TTL is that word's first byte on the wire, whatever the protocol): the wire
/// word `ttl << 8 | proto` loses 0x100, whose delta is the wire word 0xfeff.
pub const TTL_DECREMENT_DELTA: u16 = u16::from_ne_bytes([0xfe, 0xff]);

/// The one's-complement sum of `data` (native-order words, an odd trailing byte padded with
/// zero), added to `initial`, not yet folded or complemented. For building and verifying
/// packets in userspace and tests; the data plane only ever updates checksums incrementally.
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let mut acc = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        acc += u16::from_ne_bytes([pair[0], pair[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        acc += u16::from_ne_bytes([*last, 0]) as u64;
    }
    while acc >> 32 != 0 {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// The Internet checksum of `data` plus `initial` (native order, ready to store).
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    !fold(sum(data, initial))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rewrite and its way back by the negated delta leave a checksum as it was (as a
    /// one's-complement value: 0 and 0xffff are both zero), for addresses and ports alike.
    #[test]
    fn the_negated_delta_undoes_the_change() {
        let same = |a: u16, b: u16| a == b || (a == 0 || a == 0xffff) && (b == 0 || b == 0xffff);
        let cases: [(u32, u32, u16, u16); 4] = [
            (0x0264_12c6, 0x0b01_12c6, 80u16.to_be(), 8080u16.to_be()),
            (0xffff_ffff, 0, 0, 0xffff),
            (0x1234_5678, 0x1234_5678, 443, 443),
            (0, 0x8000_0001, 1, 0xfffe),
        ];
        for (old, new, old_port, new_port) in cases {
            let (addr, port) = (delta32(old, new), delta16(old_port, new_port));
            for check in [0u16, 1, 0x1234, 0xfffe, 0xffff] {
                let there = apply(apply(check, addr), port);
                assert!(same(
                    replace32(replace16(check, old_port, new_port), old, new),
                    there
                ));
                let back = apply(apply(there, negate(addr)), negate(port));
                assert!(same(back, check), "{check:#x} -> {there:#x} -> {back:#x}");
            }
        }
    }

    /// RFC 1071 §3's worked example: the sum of these words is ddf2 (big-endian view).
    #[test]
    fn sum_matches_rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        let folded = fold(sum(&data, 0));
        assert_eq!(
            u16::from_ne_bytes(folded.to_ne_bytes()),
            u16::from_ne_bytes([0xdd, 0xf2])
        );
    }

    /// An incremental update must equal recomputing the checksum from scratch.
    #[test]
    fn incremental_updates_equal_full_recomputation() {
        let mut data = [0u8; 40];
        let mut state = 0x1234_5678u32;
        for round in 0..500 {
            for b in data.iter_mut() {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (state >> 16) as u8;
            }
            let check = checksum(&data, 0);

            let old4 = u32::from_ne_bytes(data[4..8].try_into().unwrap());
            let new4 = u32::from_ne_bytes([round as u8, 0xff, 0x00, (round >> 3) as u8]);
            data[4..8].copy_from_slice(&new4.to_ne_bytes());
            let check = replace32(check, old4, new4);
            assert_eq!(check, checksum(&data, 0), "replace32, round {round}");

            let old2 = u16::from_ne_bytes([data[10], data[11]]);
            let new2 = (round as u16).wrapping_mul(7919);
            data[10..12].copy_from_slice(&new2.to_ne_bytes());
            let check = replace16(check, old2, new2);
            assert_eq!(check, checksum(&data, 0), "replace16, round {round}");

            let words = |bytes: &[u8]| -> [u32; 4] {
                core::array::from_fn(|i| {
                    u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap())
                })
            };
            let old16 = words(&data[16..32]);
            let mut new_bytes: [u8; 16] = data[16..32].try_into().unwrap();
            new_bytes.reverse();
            new_bytes[0] ^= round as u8;
            data[16..32].copy_from_slice(&new_bytes);
            let check = replace128(check, &old16, &words(&new_bytes));
            assert_eq!(check, checksum(&data, 0), "replace128, round {round}");
        }
    }

    /// A checksum moved by a [`diff128`], as the kernel's `inet_proto_csum_replace_by_diff`
    /// moves a complete one, equals [`replace128`]'s.
    #[test]
    fn diff128_moves_a_checksum_like_replace128() {
        let mut state = 0x9e37_79b9u32;
        let mut next = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            state
        };
        for _ in 0..2000 {
            let old = [next(), next(), next(), next()];
            let new = [next(), next(), 0, next()];
            let check = next() as u16;
            let sum = (!check) as u32 as u64 + diff128(&old, &new) as u64;
            let sum = (sum & 0xffff_ffff) + (sum >> 32);
            let by_diff = !fold(((sum & 0xffff_ffff) + (sum >> 32)) as u32);
            assert_eq!(by_diff, replace128(check, &old, &new));
        }
    }

    /// A valid packet sums (checksum field included) to all ones.
    #[test]
    fn checksum_of_data_with_its_checksum_is_zero() {
        let mut data =
            *b"\x45\x00\x00\x3c\x1c\x46\x40\x00\x40\x06\x00\x00\xac\x10\x0a\x63\xac\x10\x0a\x0c";
        let check = checksum(&data, 0);
        data[10..12].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(checksum(&data, 0), 0);
        // The well-known value of this header's checksum (big-endian b1e6).
        assert_eq!(data[10..12], [0xb1, 0xe6]);
    }

    /// Deltas worked out ahead and applied later, separately or added, give what the
    /// replacements give; the TTL delta equals decrementing the TTL byte of a real header.
    #[test]
    fn deltas_applied_later_equal_the_replacements() {
        let mut state = 0x2545_f491u32;
        let mut next = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            state
        };
        for _ in 0..2000 {
            let check = next() as u16;
            let (old4, new4) = (next(), next());
            let (old2, new2) = (next() as u16, next() as u16);
            assert_eq!(
                apply(check, delta32(old4, new4)),
                replace32(check, old4, new4)
            );
            assert_eq!(
                apply(check, add(delta32(old4, new4), delta16(old2, new2))),
                replace16(replace32(check, old4, new4), old2, new2)
            );
            let old = [next(), next(), next(), next()];
            let new = [next(), 0, next(), next()];
            assert_eq!(
                apply(check, delta128(&old, &new)),
                replace128(check, &old, &new)
            );
        }
        let mut header =
            *b"\x45\x00\x00\x3c\x1c\x46\x40\x00\x40\x06\x00\x00\xac\x10\x0a\x63\xac\x10\x0a\x0c";
        for ttl in [1u8, 2, 64, 255] {
            header[8] = ttl;
            header[10..12].copy_from_slice(&[0, 0]);
            let check = checksum(&header, 0);
            header[8] = ttl - 1;
            assert_eq!(
                apply(check, TTL_DECREMENT_DELTA),
                checksum(&header, 0),
                "ttl {ttl}"
            );
        }
    }
}
