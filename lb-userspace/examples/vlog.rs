fn main() {
    let obj = std::fs::read(std::env::args().nth(1).unwrap()).unwrap();
    let mut ebpf = aya::EbpfLoader::new()
        .verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS)
        .load(&obj)
        .unwrap();
    let p: &mut aya::programs::Xdp = ebpf.program_mut("xlb").unwrap().try_into().unwrap();
    match p.load() {
        Ok(()) => println!("loaded"),
        Err(e) => {
            let s = format!("{e:?}");
            println!("{}", &s[s.len().saturating_sub(6000)..]);
        }
    }
}
