//! The store's modules import one another without circles, and its files have names of
//! their own, except each backend's part of the same name (`sqlite/ingest.rs`,
//! `postgres/ingest.rs`): the layout tells what lives where (issue 29). The rules and the
//! limits of their parse are in herald-core's `tests/common/layout.rs`, shared by every
//! crate's layout test.

#[path = "../../herald-core/tests/common/layout.rs"]
mod layout;

#[test]
fn store_modules_import_without_circles_and_files_have_names_of_their_own() {
    // The shared recording SQL uses the backend trait: an edge the parse must find.
    let known = ("recording", "backend");
    layout::assert_layout(
        env!("CARGO_MANIFEST_DIR"),
        known,
        &[&["sqlite", "postgres"]],
    );
}
