// Re-embed the migrations whenever one is added or changed (`sqlx::migrate!` reads the folder
// at compile time, and cargo would not otherwise notice a new file).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
