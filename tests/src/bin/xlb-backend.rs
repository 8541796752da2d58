//! `xlb-backend`: the backend server of xlb's tests and demo (see `xlb_tests::server`).
//! Prints "ready" once its sockets are bound.

use std::net::SocketAddr;

use clap::Parser;

/// A test backend: HTTP echo and UDP echo, naming itself in every answer.
#[derive(Debug, Parser)]
struct Args {
    /// Name returned in every answer.
    #[arg(long)]
    name: String,
    /// Address to serve HTTP on.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Address to serve UDP on.
    #[arg(long)]
    udp: Option<SocketAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let name = args.name.clone();
    xlb_tests::server::bind_and_serve(args.name, args.http, args.udp, || {
        println!("{name} ready");
    })
    .await
}
