//! Where a (service, pool)'s backend table lives in the per-table maps (`BACKEND_TABLES`,
//! `RR_CURSORS`, `SPILLED`): one formula, used by the program to find a new flow's table and by
//! userspace to publish it.

use crate::consts::limits::MAX_POOLS_PER_SERVICE;

/// The index of pool `pool` of service `service_id` in the per-table maps.
#[inline(always)]
pub const fn table_index(service_id: u32, pool: u32) -> u32 {
    service_id * MAX_POOLS_PER_SERVICE + pool
}

/// The service id and pool of the table at `index` (the inverse of [`table_index`]).
#[inline(always)]
pub const fn table_owner(index: u32) -> (u32, u32) {
    (index / MAX_POOLS_PER_SERVICE, index % MAX_POOLS_PER_SERVICE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_and_its_owner_are_inverse() {
        for (service, pool) in [(0, 0), (0, 7), (1, 0), (16_383, 7)] {
            assert_eq!(table_owner(table_index(service, pool)), (service, pool));
        }
        assert_eq!(table_index(2, 3), 19);
    }
}
