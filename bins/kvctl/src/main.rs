//! `kvctl`: the FlashKV command-line client (SPEC section 4).

mod admin;
mod bench;
mod check;
mod cli;
mod exec;

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Cmd, ShellLine};
use exec::Rendered;
use kv_client::{Client, Options};

fn emit(r: &Rendered, shell: bool) {
    let mut out = std::io::stdout().lock();
    if shell {
        // Exactly one line per command, errors included.
        let mut line = r.stdout.join(&b' ');
        if let Some(err) = &r.stderr {
            if !line.is_empty() {
                line.push(b' ');
            }
            let err = if err.starts_with("error: ") {
                err.clone()
            } else {
                format!("error: {err}")
            };
            line.extend_from_slice(err.as_bytes());
        }
        line.retain(|&b| b != b'\n');
        let _ = out.write_all(&line);
        let _ = out.write_all(b"\n");
    } else {
        for l in &r.stdout {
            let _ = out.write_all(l);
            let _ = out.write_all(b"\n");
        }
        if let Some(err) = &r.stderr {
            eprintln!("{err}");
        }
    }
    let _ = out.flush();
}

fn main() -> ExitCode {
    let json = std::env::args().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            let message = first.trim_start_matches("error: ");
            if json {
                emit(&Rendered::usage(true, message), false);
            } else {
                eprint!("{text}");
            }
            return ExitCode::from(exec::USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exec::DEFINITE);
        }
    };
    let mut opts = Options {
        timeout: cli.timeout,
        serializable: cli.serializable,
        token: cli.token.clone(),
        ..Options::default()
    };
    if let Some(ca) = &cli.cacert {
        let identity = cli.cert.as_deref().zip(cli.key.as_deref());
        match kv_client::ClientTls::from_files(ca, identity) {
            Ok(tls) => opts.net.client_tls = Some(tls),
            Err(e) => {
                emit(&Rendered::usage(cli.json, &format!("TLS: {e}")), false);
                return ExitCode::from(exec::USAGE);
            }
        }
    }
    let endpoints: Vec<String> = cli
        .endpoints
        .iter()
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        emit(&Rendered::usage(cli.json, "no endpoints"), false);
        return ExitCode::from(exec::USAGE);
    }
    let client = runtime.block_on(async { Client::new(endpoints.clone(), opts.clone()) });
    match cli.command {
        Cmd::Shell => {
            shell(&runtime, &client, cli.json);
            ExitCode::SUCCESS
        }
        Cmd::Bench {
            clients,
            requests,
            value_size,
            key_size,
            keys,
            rate,
            puts_only,
        } => {
            let p = bench::Params {
                clients,
                requests,
                value_size,
                key_size,
                keys,
                rate,
                puts_only,
                prefix: "bench/",
                limited: false,
            };
            for line in runtime.block_on(bench::run(&endpoints, &opts, &p, cli.json)) {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Cmd::Check {
            what: cli::CheckCmd::Perf { load, seconds },
        } => {
            let verdict = runtime.block_on(check::perf(&endpoints, &opts, &load, seconds));
            for line in &verdict.lines {
                println!("{line}");
            }
            if verdict.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        cmd => {
            let r = runtime.block_on(exec::run(&client, cmd, cli.json));
            emit(&r, false);
            ExitCode::from(r.code)
        }
    }
}

fn shell(runtime: &tokio::runtime::Runtime, client: &Client, json: bool) {
    let tty = std::io::stdin().is_terminal();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if tty {
            print!("kvctl> ");
            let _ = std::io::stdout().flush();
        }
        let Some(Ok(line)) = lines.next() else {
            break;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let r = match shlex::split(line) {
            None => Rendered::usage(json, "unbalanced quotes or trailing backslash"),
            Some(words) if words.is_empty() => continue,
            Some(words) => match ShellLine::try_parse_from(words) {
                Err(e) => {
                    let text = e.render().to_string();
                    let first = text.lines().next().unwrap_or("bad command");
                    Rendered::usage(json, first.trim_start_matches("error: "))
                }
                Ok(ShellLine {
                    command: Cmd::Shell | Cmd::Bench { .. } | Cmd::Check { .. },
                }) => Rendered::usage(json, "not available in the shell"),
                Ok(ShellLine {
                    command: Cmd::Batch { file: None },
                }) => Rendered::usage(json, "in the shell, batch needs a FILE"),
                Ok(ShellLine { command }) => runtime.block_on(exec::run(client, command, json)),
            },
        };
        emit(&r, true);
    }
}
