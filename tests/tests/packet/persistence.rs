//! Source persistence: a client's new flows go to its last new flow's backend while the
//! service's persistence lasts, whatever round robin's next turn; then round robin again.

use std::{thread::sleep, time::Duration};

use super::*;

const PERSISTENT: &str = r#"
interfaces = ["c0", "s0"]

[[service]]
name = "sticky"
listen = "198.18.100.1:80"
protocol = "tcp"
persistence = "1s"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]
"#;

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_clients_new_flows_follow_its_last_one_while_persistence_lasts() {
    with_lab_config(PERSISTENT, |lab| {
        let expect = |what: &str, from: &str, backend: &str, mac: u8| {
            let syn = Frame::tcp(from, "198.18.100.1:80");
            let out = to_backend(&syn, backend, backend_mac(mac), S0_MAC);
            lab.expect(what, &syn, lab.c0, XDP_REDIRECT, &out);
        };
        expect(
            "a first SYN: round robin's first slot",
            "198.18.0.2:41000",
            "198.18.1.11:8080",
            0x11,
        );
        // Round robin's next turn is taken, but the client's backend given.
        expect(
            "the client's next connection",
            "198.18.0.2:41001",
            "198.18.1.11:8080",
            0x11,
        );
        expect(
            "another client: round robin",
            "198.18.0.3:41000",
            "198.18.1.13:8080",
            0x13,
        );
        expect(
            "that client's next connection",
            "198.18.0.3:41001",
            "198.18.1.13:8080",
            0x13,
        );
        // Past the persistence (1 s since each client's last new flow): round robin again.
        sleep(Duration::from_millis(1_200));
        expect(
            "a third client",
            "198.18.0.4:41000",
            "198.18.1.12:8080",
            0x12,
        );
        expect(
            "the first client, its persistence over",
            "198.18.0.2:41002",
            "198.18.1.13:8080",
            0x13,
        );
        assert_eq!(lab.service_new_flows("sticky"), 6);
    });
}
