//! `kzscaler-controller`. The replica cache, activate and the filter API are not built yet:
//! this binary only checks a Deployment's annotations given as `key=value` arguments.

use std::collections::BTreeMap;
use std::process::ExitCode;

use kzscaler_controller::ManagedSpec;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "kzscaler-controller (early build)\n\nUsage: kzscaler-controller check-annotations KEY=VALUE...\n\n\
             Checks kzscaler.io/* Deployment annotations and prints the settings they give.\n\
             The controller loop (replica cache, activate, idle scale-down) is not built yet."
        );
        return ExitCode::SUCCESS;
    }
    if args[0] != "check-annotations" {
        eprintln!(
            "error: unknown command {:?}: expected check-annotations",
            args[0]
        );
        return ExitCode::from(2);
    }
    let mut annotations = BTreeMap::new();
    for a in &args[1..] {
        let Some((k, v)) = a.split_once('=') else {
            eprintln!("error: argument {a:?} is not KEY=VALUE");
            return ExitCode::from(2);
        };
        annotations.insert(k.to_owned(), v.to_owned());
    }
    match ManagedSpec::from_annotations(&annotations) {
        Ok(Some(spec)) => {
            println!("{spec:#?}");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("not managed: kzscaler.io/scale-to-zero is not \"true\"");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
