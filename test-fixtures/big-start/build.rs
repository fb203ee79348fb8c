fn main() {
    // 128 MiB of initial linear memory: more than any handler's memory cap, so instantiation
    // itself must fail with the `memory` outcome.
    println!("cargo:rustc-link-arg=--initial-memory=134217728");
}
