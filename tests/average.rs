//! `examples/average.rs` end to end: three processes over TCP find each
//! other through kad from one bootstrap address, and each hears from
//! exactly the other two, every round, and ends with their average.

mod common;

use common::run_example;
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn three_processes_hear_each_other_and_agree() {
    let stdout = run_example("average");

    // `[<value>] bootstrap <address>/p2p/<id>` names each process.
    let mut ids = BTreeMap::new();
    let mut heard: BTreeMap<String, Vec<BTreeSet<String>>> = BTreeMap::new();
    let mut finals = BTreeMap::new();
    for line in stdout.lines() {
        let Some((process, said)) = line.split_once("] ") else {
            continue;
        };
        let process = process.trim_start_matches('[').to_string();
        if let Some(address) = said.strip_prefix("bootstrap ") {
            let id = address.rsplit('/').next().unwrap().to_string();
            ids.insert(process.clone(), id);
        } else if let Some((_, from)) = said.split_once("(heard from ") {
            let from = from.trim_end_matches(')').split(", ").map(String::from);
            heard.entry(process).or_default().push(from.collect());
        } else if let Some(value) = said.strip_prefix("final ") {
            finals.insert(process, value.to_string());
        }
    }
    assert_eq!(ids.len(), 3, "{stdout}");
    for (process, rounds) in &heard {
        let others: BTreeSet<String> = ids
            .iter()
            .filter(|(p, _)| *p != process)
            .map(|(_, id)| id.clone())
            .collect();
        assert_eq!(rounds.len(), 3, "{process}: {stdout}");
        for from in rounds {
            assert_eq!(from, &others, "{process}: {stdout}");
        }
    }
    assert_eq!(heard.len(), 3);
    let expected: BTreeMap<String, String> = ["1", "2", "6"]
        .iter()
        .map(|p| (p.to_string(), "3".to_string()))
        .collect();
    assert_eq!(finals, expected, "{stdout}");
}
