//! `seerscale`: plan, dry-run and execute SEER-style SwAV pretraining of
//! RegNet-Y under FSDP. Each subcommand lives in `commands/`; this file only
//! parses flags and turns errors into one clear line and a non-zero exit.

// Flag checks read `!(x > 0.0)` on purpose: NaN fails them too.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

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
    /// The GPU time model against measured GPU time (public timings, an H200); fit its parameters.
    Accuracy(commands::accuracy::AccuracyArgs),
    /// The planner's collective times on a cluster, as nccl-tests prints its measurements.
    Comm(commands::comm::CommArgs),
    /// Datasets at scale: `data pack` writes tar shards, `data bench` measures the loader.
    Data(commands::data::DataArgs),
    /// Rebuild a plan's memory model: breakdown, top contributors, headroom, SVG timeline.
    DryRun(commands::dry_run::DryRunArgs),
    /// Pooled trunk features of every image in a folder (safetensors).
    Embed(commands::embed::EmbedArgs),
    /// Evaluate trained features: `eval knn`.
    Eval(commands::eval::EvalArgs),
    /// A training checkpoint as one safetensors file under torchvision's RegNet names.
    Export(commands::export::ExportArgs),
    /// Per-stage parameters, FLOPs and saved activations of a model.
    Model(commands::model::ModelArgs),
    /// Measure this machine (op rates, memory bandwidth, collectives) and write a hardware profile.
    Calibrate(commands::calibrate::CalibrateArgs),
    /// Search sharding, wrapping, precision, batch, checkpointing and cluster size; write a plan file.
    Plan(commands::plan::PlanArgs),
    /// Best plan per cluster size and the frontier of days against cost.
    Sweep(commands::sweep::SweepArgs),
    /// Execute a plan: SwAV training of RegNet-Y under FSDP (tch + c10d).
    Train(commands::train::TrainCliArgs),
    /// Plan fixed variants, execute each with the executor, report predicted vs measured (markdown + SVG).
    Validate(commands::validate::ValidateArgs),
}

fn main() {
    // Behave like a Unix tool when piped into `head`: die quietly on a closed
    // pipe instead of panicking inside println!.
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Accuracy(a) => commands::accuracy::run(&a),
        Command::Comm(a) => commands::comm::run(&a),
        Command::Data(a) => commands::data::run(&a),
        Command::DryRun(a) => commands::dry_run::run(&a),
        Command::Embed(a) => commands::embed::run(&a),
        Command::Eval(a) => commands::eval::run(&a),
        Command::Export(a) => commands::export::run(&a),
        Command::Model(a) => commands::model::run(&a),
        Command::Calibrate(a) => commands::calibrate::run(&a),
        Command::Plan(a) => commands::plan::run(&a),
        Command::Sweep(a) => commands::sweep::run(&a),
        Command::Train(a) => commands::train::run(&a),
        Command::Validate(a) => commands::validate::run(&a),
    };
    if let Err(e) = result {
        let line = one_line(&e);
        eprintln!("error: {line}");
        // A rank started by the launcher: tell it this rank's own error.
        if let Some(f) = std::env::var_os(executor::launch::ERROR_FILE_VAR) {
            let _ = std::fs::write(f, format!("{line}\n"));
        }
        std::process::exit(1);
    }
}

/// The error and its causes on one line, each said once: library errors
/// often put their cause in their own message as well as in the chain.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = without_cpp_frames(&e.to_string());
    for cause in e.chain().skip(1) {
        let c = without_cpp_frames(&cause.to_string());
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

/// libtorch's errors carry "Exception raised from ..." and a C++ backtrace
/// (`frame #0: c10::Error::Error ...`): keep the message, on one line.
fn without_cpp_frames(msg: &str) -> String {
    let msg = msg.split("Exception raised from").next().unwrap_or(msg);
    msg.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("frame #")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_backtraces_are_cut_to_their_message() {
        let torch = "Internal torch error: PytorchStreamReader failed reading zip archive: failed finding central directory\n\
                     Exception raised from valid at /pytorch/caffe2/serialize/inline_container.cc:242 (most recent call first):\n\
                     frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x9d (0x7f in libc10.so)\n\
                     frame #1: <unknown function> + 0x4222c0 (0x55 in seerscale)\n";
        let e = anyhow::anyhow!(torch.to_string()).context("checkpoint runs/x/rank1.pt");
        assert_eq!(
            one_line(&e),
            "checkpoint runs/x/rank1.pt: Internal torch error: PytorchStreamReader failed reading zip archive: failed finding central directory"
        );
    }
}
