import ArgumentParser

struct Types: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the device types umdev can serve.")

    func run() {
        for t in DeviceType.all {
            print("\(t.name)")
            print("  description: \(t.description)")
            print("  device_api:  \(t.deviceAPI)")
        }
    }
}
