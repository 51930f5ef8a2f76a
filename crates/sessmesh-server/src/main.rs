//! `sessmesh`: a sessmesh node that speaks the Redis protocol.
//!
//! ```text
//! sessmesh certs init --dir certs
//! sessmesh certs issue node-1 --ip 10.0.0.1 --dir certs
//! sessmesh serve --config sessmesh.toml
//! sessmesh status --node 10.0.0.1:9379
//! ```
#![forbid(unsafe_code)]

mod allocator;
mod certs;
mod config;
mod metrics;
mod serve;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A leaderless session cache cluster node that speaks the Redis protocol.
#[derive(Parser, Debug)]
#[command(name = "sessmesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: join the cluster and serve Redis clients.
    Serve(Box<config::Overrides>),
    /// Make the cluster's certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Show a node's view of the cluster.
    Status {
        /// The node's HTTP address (its `http_listen`), like 127.0.0.1:9379.
        #[arg(long)]
        node: String,
        /// Print the raw JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Generate the cluster CA: ca.pem (give it to every node) and ca.key
    /// (keep it on the machine that issues certificates).
    Init {
        /// Where to write them.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The cluster's name, written into the CA.
        #[arg(long, default_value = "sessmesh")]
        cluster: String,
        /// Replace an existing CA (every node certificate must be reissued).
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate signed by the CA in --dir: NAME.pem and NAME.key.
    Issue {
        /// The node's name (letters, digits, '-' and '.', like a host name).
        name: String,
        /// An IP address peers reach the node at; repeat for several.
        #[arg(long = "ip", required = true)]
        ips: Vec<std::net::IpAddr>,
        /// The directory holding ca.pem and ca.key, and receiving the files.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(overrides) => serve::run(*overrides),
        Command::Certs {
            command:
                CertsCommand::Init {
                    dir,
                    cluster,
                    force,
                },
        } => certs::init(&dir, &cluster, force),
        Command::Certs {
            command: CertsCommand::Issue { name, ips, dir },
        } => certs::issue(&dir, &name, &ips),
        Command::Status { node, json } => status::show(&node, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessmesh: {e}");
            ExitCode::from(2)
        }
    }
}
