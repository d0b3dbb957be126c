import Glibc
import Locking
import Logging
import PCI

/// Logs a display device's plane whenever the guest changes it, from a
/// thread of its own: it reads only the published plane, never the device,
/// so the device's thread is not slowed by it.
final class PlaneLog: Sendable {
    let planes: PlanePublisher
    let logger: Logger
    let interval: UInt32

    init(_ planes: PlanePublisher, logger: Logger, intervalMicroseconds: UInt32 = 100_000) {
        self.planes = planes
        self.logger = logger
        self.interval = intervalMicroseconds
    }

    /// Starts watching; the thread lives as long as the process.
    func start() {
        Threads.start(detached: true) { self.watch() }
    }

    private func watch() {
        var seen = planes.generation
        logger.info("plane: \(planes.current())")
        while true {
            usleep(interval)
            let now = planes.generation
            guard now != seen else { continue }
            seen = now
            logger.info("plane: \(planes.current())")
        }
    }
}
