//! `seerscale`: plan, dry-run and execute SEER-style SwAV pretraining of
//! RegNet-Y under FSDP. Each subcommand lives in `commands/`; this file only
//! parses flags and turns errors into one clear line and a non-zero exit.

mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "seerscale", version, about = "Plan, dry-run and execute SEER-style SwAV pretraining of RegNet-Y under FSDP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per-stage parameters, FLOPs and saved activations of a model.
    Model(commands::model::ModelArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Model(a) => commands::model::run(&a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
