//! `xlb-backend`: the backend server of xlb's tests and demo (see `xlb_tests::server`).
//! Prints "<name> ready" once its sockets are bound.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use xlb_tests::server::{ServerSpec, bind_and_serve};

/// A test backend: HTTP echo and download, UDP echo, and a load agent.
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
    /// Address of the load agent (HAProxy agent-check protocol).
    #[arg(long, requires = "agent_file")]
    agent: Option<SocketAddr>,
    /// File whose first line the agent answers (default "up 100%").
    #[arg(long)]
    agent_file: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec = ServerSpec {
        name: args.name.clone(),
        http: args.http,
        udp: args.udp,
        agent: args.agent.zip(args.agent_file),
    };
    bind_and_serve(spec, || println!("{} ready", args.name)).await
}
