import ArgumentParser

struct Types: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the device types umdev can serve.")

    @Flag(help: "Print only the type names, one per line.")
    var names = false

    func run() {
        if names {
            for t in DeviceType.all { print(t.name) }
            return
        }
        for t in DeviceType.all {
            print("\(t.name)")
            print("  description: \(t.description)")
            print("  device_api:  \(t.deviceAPI)")
            print("  display:     \(t.display.map { $0 == .region ? "region plane" : "dmabuf plane" } ?? "none")")
        }
    }
}
