//! `kzscaler-webhook`. The admission server is not built yet: this prints the patch the webhook
//! would apply to a pod read from standard input (JSON), for a namespace given as argument.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 1 || args[0] == "-h" || args[0] == "--help" {
        println!(
            "kzscaler-webhook (early build)\n\nUsage: kzscaler-webhook NAMESPACE < pod.json\n\n\
             Prints the JSON patch the webhook would apply to the pod. The admission server is not built yet."
        );
        return ExitCode::SUCCESS;
    }
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("error: reading standard input: {e}");
        return ExitCode::FAILURE;
    }
    let pod: serde_json::Value = match serde_json::from_str(&input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: standard input is not a JSON pod: {e}");
            return ExitCode::FAILURE;
        }
    };
    let field = |f: &str| -> Option<BTreeMap<String, String>> {
        serde_json::from_value(pod.get("metadata")?.get(f)?.clone()).ok()
    };
    let ops = kzscaler_webhook::mutate::pod_patch(
        field("labels").as_ref(),
        field("annotations").as_ref(),
        &args[0],
        "kzscaler",
    );
    match serde_json::to_string_pretty(&ops) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
