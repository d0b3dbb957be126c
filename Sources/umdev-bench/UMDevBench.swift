import ArgumentParser

/// The measuring tools, apart from the product: benchmarks that print
/// figures (ops/s, latency percentiles, allocations per op, RSS, CPU) and
/// play-guest, a scripted guest for demos and end-to-end tests.
@main
struct UMDevBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "umdev-bench",
        abstract: "Benchmarks of umdev, and a scripted guest (play-guest).",
        discussion: "`umdev-bench` (or `umdev-bench run`) measures register round trips, and with a flag "
            + "the mtty, display, viewer, daemon or polling figures. Servers run in this process or, where "
            + "their figures must be their own, as the `umdev` beside this program ($UMDEV overrides it). "
            + "Heap allocations are counted by a malloc interposer linked into this program only: umdev "
            + "itself runs on the system allocator.",
        subcommands: [Bench.self, PlayGuest.self],
        defaultSubcommand: Bench.self)
}
