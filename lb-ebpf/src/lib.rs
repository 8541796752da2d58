//! The library side of `lb-ebpf`: empty. It exists so that `lb-userspace` can depend on the
//! crate, which makes cargo rebuild the embedded object when the eBPF sources change; the
//! programs are the binaries `xlb` (`main.rs`), `xlb-noop` (`noop.rs`) and `xlb-decap`
//! (`decap.rs`).
#![no_std]
// This file exists so that lb-userspace can declare a build-dependency on this crate, which makes
// cargo rebuild the embedded object when the eBPF sources change. The program is in main.rs.
