#![no_std]
// This file exists so that lb-userspace can declare a build-dependency on this crate, which makes
// cargo rebuild the embedded object when the eBPF sources change. The program is in main.rs.
