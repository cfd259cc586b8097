//! The project's layout rules, checked on a crate's own `src/` by each crate's
//! `tests/layout.rs` (which includes this file): its modules import one another without
//! circles, so each can be read knowing only what it imports (issue 13), and no two of its
//! files share a name, so a file's name says which one is meant (issue 29).
//!
//! A module is a file under `src/` (`lib.rs` aside). An edge is a `crate::…` path, or a
//! child's `super::…` path, in the module's code before its first `#[cfg(test)]`, with
//! comment lines left out. The parse is textual, and these are its limits:
//! - a parent's paths to its own children (`group_commit::X`, `self::room::Y`) are not
//!   edges: a directory's `mod.rs` and its files are read as one unit, each child may use
//!   what the parent holds, and a circle through them is not reported;
//! - one level of braces is read (`use crate::{a::X, b::Y}`); deeper nesting, `super::super`
//!   and paths written by macros are not;
//! - code after the first `#[cfg(test)]` is not read, and `crate::` inside a string counts
//!   as an edge.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The checks each crate's layout test makes on the crate at `manifest_dir`: no import
/// circle, and no two files of one name but those of `parallel` (see
/// [`assert_file_names_unique`]). `known` is an edge the parse must find, so that a parse
/// that finds nothing cannot pass.
pub fn assert_layout(manifest_dir: &str, known: (&str, &str), parallel: &[&[&str]]) {
    let src = Path::new(manifest_dir).join("src");
    let graph = import_graph(&src);
    assert!(
        graph
            .get(known.0)
            .is_some_and(|edges| edges.contains(known.1)),
        "the parse did not find {} -> {}",
        known.0,
        known.1
    );
    assert_no_import_circles(&graph);
    assert_file_names_unique(&src, parallel);
}

/// The module graph of the crate whose sources are `src`: each module and the modules it
/// imports.
pub fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = rust_files(src);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_name(src, f))
        .filter(|m| m != "lib")
        .collect();
    files
        .iter()
        .filter(|f| module_name(src, f) != "lib")
        .map(|f| {
            let name = module_name(src, f);
            let code = std::fs::read_to_string(f).unwrap();
            let edges = imports(&name, &code, &modules);
            (name, edges)
        })
        .collect()
}

/// Panics naming the circle when modules of `graph` import one another in a circle.
pub fn assert_no_import_circles(graph: &BTreeMap<String, BTreeSet<String>>) {
    // Depth-first search; a module met again while still on the path closes a circle.
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
            panic!("import circle: {} -> {module}", path[at..].join(" -> "));
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
        visit(module, graph, &mut Vec::new(), &mut done);
    }
}

/// Panics naming them when two files under `src` share a name. A directory's `mod.rs` is
/// its own name, not a shared one; and a name may repeat across the directories of one
/// group of `parallel` (each backend's `sqlite/ingest.rs` and `postgres/ingest.rs`: the same
/// part, one per implementation), once in each and nowhere else.
pub fn assert_file_names_unique(src: &Path, parallel: &[&[&str]]) {
    let mut by_name: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for file in rust_files(src) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name != "mod.rs" {
            let relative = file.strip_prefix(src).unwrap().to_path_buf();
            by_name.entry(name).or_default().push(relative);
        }
    }
    for (name, files) in by_name {
        if files.len() < 2 {
            continue;
        }
        let mut dirs: Vec<String> = files
            .iter()
            .map(|f| f.parent().unwrap().to_string_lossy().into_owned())
            .collect();
        dirs.sort();
        let of_one_group = parallel.iter().any(|group| {
            let mut group: Vec<String> = group.iter().map(|d| (*d).to_owned()).collect();
            group.sort();
            dirs.iter().all(|d| group.contains(d)) && dirs.windows(2).all(|w| w[0] != w[1])
        });
        assert!(of_one_group, "files named {name}: {files:?}");
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    found
}

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

/// The longest known module that `path` (`a::b::Item`) starts with.
fn resolve(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let segments: Vec<&str> = path.split("::").collect();
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|candidate| modules.contains(candidate))
}

/// The path that starts `text` (`a::b::Item`, no trailing `::`).
fn leading_path(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    text[..end].trim_end_matches(':')
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
            // `crate::{a::X, b::Y}`: each path in the braces, else the one path.
            let paths: Vec<&str> = match rest.strip_prefix('{') {
                Some(inner) => inner[..inner.find('}').unwrap_or(inner.len())]
                    .split(',')
                    .map(|p| leading_path(p.trim()))
                    .collect(),
                None => vec![leading_path(rest)],
            };
            for path in paths {
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
    }
    found
}
