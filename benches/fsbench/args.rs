//! Command-line arguments of the subcommands: `--key value` (repeatable) and bare `--flag`.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use crate::Res;

pub(crate) struct Args {
    pub(crate) values: BTreeMap<String, Vec<String>>,
    pub(crate) flags: BTreeSet<String>,
}

impl Args {
    pub(crate) fn parse(raw: &[String]) -> Args {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut flags = BTreeSet::new();
        let mut i = 0;
        while i < raw.len() {
            let Some(key) = raw[i].strip_prefix("--") else {
                eprintln!("fsbench: unexpected argument {:?}", raw[i]);
                std::process::exit(2);
            };
            match raw.get(i + 1) {
                Some(v) if !v.starts_with("--") => {
                    values.entry(key.to_string()).or_default().push(v.clone());
                    i += 2;
                }
                _ => {
                    flags.insert(key.to_string());
                    i += 1;
                }
            }
        }
        Args { values, flags }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    pub(crate) fn req(&self, key: &str) -> Res<&str> {
        self.get(key).ok_or_else(|| format!("missing --{key}"))
    }

    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.values.get(key).cloned().unwrap_or_default()
    }

    pub(crate) fn num(&self, key: &str, default: u64) -> Res<u64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{key}: not a number: {v}")),
        }
    }

    pub(crate) fn flag(&self, key: &str) -> bool {
        self.flags.contains(key)
    }
}
