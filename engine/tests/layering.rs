//! The layering the crates enforce, checked so that it stays enforced: no protocol crate
//! (`ringleader-time`, `-swim`, `-serf`, `-raft`) reaches the runtime, io_uring, glommio or
//! the simulator through its dependencies, however indirectly; each forbids `unsafe`; and
//! the engine's library does not pull in the simulator.
//!
//! The dependency graph is the one `cargo metadata` resolves for the workspace. Normal and
//! build dependencies count (both are compiled for whoever embeds a core); dev-dependencies
//! do not (they build only the crate's own tests).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The sans-IO protocol crates.
const PROTOCOL_CRATES: [&str; 4] = [
    "ringleader-time",
    "ringleader-swim",
    "ringleader-serf",
    "ringleader-raft",
];

/// What no protocol crate may depend on.
const FORBIDDEN: [&str; 4] = ["glommio", "io-uring", "ringleader-engine", "ringleader-sim"];

/// The resolved dependency graph, by package id.
struct Graph {
    /// Package id -> package name.
    names: BTreeMap<String, String>,
    /// Package id -> the ids it depends on through a normal or build dependency.
    deps: BTreeMap<String, Vec<String>>,
    /// Package name -> the source file of its library target (workspace members only).
    lib_src: BTreeMap<String, String>,
}

impl Graph {
    fn from_metadata(m: &Value) -> Graph {
        let mut names = BTreeMap::new();
        let mut lib_src = BTreeMap::new();
        let members: Vec<&str> = m["workspace_members"]
            .as_array()
            .expect("workspace_members")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for p in m["packages"].as_array().expect("packages") {
            let id = p["id"].as_str().expect("package id");
            let name = p["name"].as_str().expect("package name");
            names.insert(id.to_owned(), name.to_owned());
            if !members.contains(&id) {
                continue;
            }
            for t in p["targets"].as_array().expect("targets") {
                let is_lib = t["kind"]
                    .as_array()
                    .expect("target kinds")
                    .iter()
                    .any(|k| k == "lib");
                if is_lib {
                    let src = t["src_path"].as_str().expect("src_path");
                    lib_src.insert(name.to_owned(), src.to_owned());
                }
            }
        }
        let mut deps = BTreeMap::new();
        for node in m["resolve"]["nodes"].as_array().expect("resolve.nodes") {
            let id = node["id"].as_str().expect("node id");
            let out = node["deps"]
                .as_array()
                .expect("node deps")
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .expect("dep_kinds")
                        .iter()
                        .any(|k| k["kind"].as_str() != Some("dev"))
                })
                .map(|d| d["pkg"].as_str().expect("dep pkg").to_owned())
                .collect();
            deps.insert(id.to_owned(), out);
        }
        Graph {
            names,
            deps,
            lib_src,
        }
    }

    fn id_of(&self, name: &str) -> Option<&str> {
        self.names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| id.as_str())
    }

    /// The shortest dependency chain from `from` to any package named in `targets`, as
    /// package names, or `None` if there is none.
    fn path_to(&self, from: &str, targets: &[&str]) -> Option<Vec<String>> {
        let start = self.id_of(from)?;
        let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(id) = queue.pop_front() {
            if id != start && targets.contains(&self.names[id].as_str()) {
                let mut chain = vec![self.names[id].clone()];
                let mut at = id;
                while let Some(&p) = parent.get(at) {
                    chain.push(self.names[p].clone());
                    at = p;
                }
                chain.reverse();
                return Some(chain);
            }
            for d in self.deps.get(id).into_iter().flatten() {
                if d != start && !parent.contains_key(d.as_str()) {
                    parent.insert(d, id);
                    queue.push_back(d);
                }
            }
        }
        None
    }
}

fn workspace_metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn protocol_crates_reach_no_runtime_io_uring_glommio_or_simulator() {
    let g = Graph::from_metadata(&workspace_metadata());
    for name in PROTOCOL_CRATES {
        assert!(g.id_of(name).is_some(), "{name} is not in the workspace");
        if let Some(chain) = g.path_to(name, &FORBIDDEN) {
            panic!(
                "{name} depends on {}: {}",
                chain.last().expect("a chain has an end"),
                chain.join(" -> ")
            );
        }
    }
}

#[test]
fn the_engine_library_does_not_pull_in_the_simulator() {
    let g = Graph::from_metadata(&workspace_metadata());
    assert!(
        g.id_of("ringleader-sim").is_some(),
        "ringleader-sim is not in the workspace"
    );
    if let Some(chain) = g.path_to("ringleader-engine", &["ringleader-sim"]) {
        panic!(
            "the engine's library depends on the simulator: {}",
            chain.join(" -> ")
        );
    }
}

#[test]
fn protocol_crates_forbid_unsafe_code() {
    let g = Graph::from_metadata(&workspace_metadata());
    for name in PROTOCOL_CRATES {
        let src = g
            .lib_src
            .get(name)
            .unwrap_or_else(|| panic!("{name} has no library"));
        let text = std::fs::read_to_string(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert!(
            text.lines().any(|l| l.trim() == "#![forbid(unsafe_code)]"),
            "{src} does not say #![forbid(unsafe_code)]"
        );
    }
}

/// The checker itself finds an indirect dependency, and ignores dev-dependencies.
#[test]
fn the_checker_finds_indirect_dependencies_and_ignores_dev_ones() {
    let dep = |pkg: &str, kind: Option<&str>| serde_json::json!({ "pkg": pkg, "dep_kinds": [{ "kind": kind, "target": null }] });
    let pkg = |id: &str| serde_json::json!({ "id": id, "name": id, "targets": [] });
    let m = serde_json::json!({
        "workspace_members": ["core", "helper", "tested"],
        "packages": [pkg("core"), pkg("helper"), pkg("glommio"), pkg("tested"), pkg("ringleader-sim")],
        "resolve": { "nodes": [
            { "id": "core", "deps": [dep("helper", None)] },
            { "id": "helper", "deps": [dep("glommio", Some("build"))] },
            { "id": "glommio", "deps": [] },
            { "id": "tested", "deps": [dep("ringleader-sim", Some("dev")), dep("helper", Some("dev"))] },
            { "id": "ringleader-sim", "deps": [] },
        ]},
    });
    let g = Graph::from_metadata(&m);
    assert_eq!(
        g.path_to("core", &FORBIDDEN),
        Some(vec![
            "core".to_owned(),
            "helper".to_owned(),
            "glommio".to_owned()
        ])
    );
    assert_eq!(g.path_to("tested", &FORBIDDEN), None);
}
