//! The core's modules import one another without cycles, so each can be read knowing only
//! what it imports (issue 13). A module is a file under `src/`; an edge is a `crate::…`
//! path (or a child's `super::…`) in its code outside `#[cfg(test)]`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `src/event/live.rs` → `event::live`, `src/event/mod.rs` → `event`.
fn module_name(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|p| p != "mod")
        .collect();
    parts.join("::")
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The longest known module that `path` (`a::b::Item`) starts with.
fn resolve(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let segments: Vec<&str> = path.split("::").collect();
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|candidate| modules.contains(candidate))
}

/// What a module's non-test code imports: `crate::x::y` and, from a child, `super::…`.
fn imports(name: &str, code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code = code.split("#[cfg(test)]").next().unwrap_or(code);
    // Doc links (`[`crate::x`]`) are not imports.
    let code: String = code
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let parent = name.rsplit_once("::").map(|(p, _)| p.to_owned());
    let mut found = BTreeSet::new();
    for (prefix, base) in [("crate::", None), ("super::", parent.as_deref())] {
        for (at, _) in code.match_indices(prefix) {
            let rest = &code[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let path = rest[..end].trim_end_matches(':');
            let full = match (prefix, base) {
                ("super::", Some(parent)) => format!("{parent}::{path}"),
                ("super::", None) => continue,
                _ => path.to_owned(),
            };
            if let Some(module) = resolve(&full, modules).or_else(|| {
                // `use super::{A, B}` names items of the parent itself.
                (prefix == "super::")
                    .then(|| base.map(str::to_owned))
                    .flatten()
            }) && module != name
            {
                found.insert(module);
            }
        }
    }
    found
}

#[test]
fn core_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_name(&src, f))
        .filter(|m| m != "lib")
        .collect();
    let graph: BTreeMap<String, BTreeSet<String>> = files
        .iter()
        .filter(|f| module_name(&src, f) != "lib")
        .map(|f| {
            let name = module_name(&src, f);
            let code = std::fs::read_to_string(f).unwrap();
            let edges = imports(&name, &code, &modules);
            (name, edges)
        })
        .collect();
    assert!(graph.contains_key("signing") && graph["signing"].contains("mac"));

    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(module) {
            return;
        }
        if let Some(at) = path.iter().position(|m| *m == module) {
            panic!("import cycle: {} -> {module}", path[at..].join(" -> "));
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(module);
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done);
    }
}
