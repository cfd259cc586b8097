//! The core's modules import one another without circles, so each can be read knowing only
//! what it imports (issue 13). The rule and the limits of its parse are in
//! `common/layout.rs`, shared with the other crates' layout tests. (File names are not
//! checked here: `config/live.rs` and `event/live.rs` are the Live part of each.)

use std::path::Path;

#[path = "common/layout.rs"]
mod layout;

#[test]
fn core_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = layout::import_graph(&src);
    assert!(graph.contains_key("signing") && graph["signing"].contains("mac"));
    layout::assert_no_import_circles(&graph);
}
