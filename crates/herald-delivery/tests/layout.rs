//! The delivery worker's modules import one another without circles, and its files have
//! names of their own: the layout tells what lives where (issue 29). The rules and the
//! limits of their parse are in herald-core's `tests/common/layout.rs`, shared by every
//! crate's layout test.

#[path = "../../herald-core/tests/common/layout.rs"]
mod layout;

#[test]
fn delivery_modules_import_without_circles_and_files_have_names_of_their_own() {
    // The dispatcher sends through the worker's client: an edge the parse must find.
    layout::assert_layout(env!("CARGO_MANIFEST_DIR"), ("dispatcher", "client"), &[]);
}
