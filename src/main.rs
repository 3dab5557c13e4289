use clap::Parser;
use org_gateway::cli::{tool_config, Cli, Command, KeysCommand};
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: a large body (hundreds of thousands of JSON values) is
/// handled in a third to a half of the CPU time, because freed memory is reused instead of
/// returned to the kernel and faulted in again; small requests cost the same
/// (`benches/crafted_bodies.py`, benches/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps the allocator's memory in 4 KiB pages. Where the kernel grants transparent huge
/// pages, a 2 MiB page touched by a few small records counts whole: with 100,000 tenants
/// cached the gateway held 142 MB with them and 110 MB without, at the same request
/// throughput (`benches/tenant_memory`, benches/RESULTS.md).
fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and changes only this
    // process's memory policy.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = match args.load_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("org-gateway: {e}");
                    return ExitCode::from(2);
                }
            };
            let outcome = org_gateway::server::serve(config);
            // Queued log lines come before the exit message.
            org_gateway::telemetry::log_writer::flush();
            match outcome {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("org-gateway: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Keys(KeysCommand::Generate) => {
            println!("{}", org_gateway::auth::jwt::generate_secret().expose());
            ExitCode::SUCCESS
        }
        Command::Backup(args) => run_tool("backup", |rt| {
            let config = tool_config(args.config.as_deref(), args.data_dir.clone())
                .map_err(anyhow::Error::msg)?;
            let opts = org_gateway::backup::BackupOptions {
                out: args.out.clone(),
                organization: args.organization.clone(),
                since: args.since,
            };
            let s = rt.block_on(org_gateway::backup::backup(&config, &opts))?;
            println!(
                "backed up {} organizations ({} documents) into {}",
                s.organizations,
                s.documents,
                args.out.display()
            );
            if s.unchanged > 0 {
                println!(
                    "left out {} organizations not written since then",
                    s.unchanged
                );
            }
            for name in &s.skipped {
                eprintln!(
                    "org-gateway backup: organization {name:?} left out: a create or rename of it is in progress"
                );
            }
            Ok(true)
        }),
        Command::Restore(args) => run_tool("restore", |rt| {
            let config = tool_config(args.config.as_deref(), args.data_dir.clone())
                .map_err(anyhow::Error::msg)?;
            let opts = org_gateway::backup::RestoreOptions {
                from: args.from.clone(),
                organization: args.organization.clone(),
                skip_existing: args.skip_existing,
            };
            let s = rt.block_on(org_gateway::backup::restore(&config, &opts))?;
            println!(
                "restored {} organizations ({} documents) from {}",
                s.restored.len(),
                s.documents,
                args.from.display()
            );
            if !s.skipped.is_empty() {
                println!(
                    "skipped {} organizations the target already has",
                    s.skipped.len()
                );
            }
            for (name, why) in &s.failed {
                eprintln!("org-gateway restore: organization {name:?} not restored: {why}");
            }
            Ok(s.failed.is_empty())
        }),
        Command::Bench(args) => match org_gateway::bench::run(args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("org-gateway bench: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs an offline command on its own runtime: messages on stderr, exit status 1 on failure.
fn run_tool(
    name: &str,
    f: impl FnOnce(&tokio::runtime::Runtime) -> anyhow::Result<bool>,
) -> ExitCode {
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| f(&rt));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("org-gateway {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
