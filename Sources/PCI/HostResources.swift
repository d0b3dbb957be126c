import Glibc

/// Descriptors a device model holds on the host side beyond its regions'
/// memory (mtty's pty masters, backend sockets and their peers), with the
/// bytes that go with them, as a live upgrade hands them to the next process.
public struct HostResource: Sendable, Equatable {
    /// Which part of the device ("port0").
    public var key: String
    /// What each descriptor is to the model ("master", "listener", "peer"), and the descriptor.
    public var descriptors: [Descriptor]
    /// The model's own bytes for it (what kind it is, where it is, output not yet written).
    public var data: [UInt8]

    public struct Descriptor: Sendable, Equatable {
        public var role: String
        public var fd: Int32
        public init(role: String, fd: Int32) { self.role = role; self.fd = fd }
    }

    public init(key: String, descriptors: [Descriptor], data: [UInt8]) {
        self.key = key; self.descriptors = descriptors; self.data = data
    }

    /// The descriptor with `role`, if any.
    public func fd(_ role: String) -> Int32? { descriptors.first { $0.role == role }?.fd }

    /// Closes every descriptor (a resource nothing claimed, or one refused).
    public func closeAll() { for d in descriptors { close(d.fd) } }
}

/// A model with host resources to hand over. Between requests, on the
/// device's owner thread (the device is paused): nothing moves meanwhile.
public protocol HostResourceHolder: AnyObject {
    /// Every host resource, its descriptors still the model's.
    func hostResources() -> [HostResource]
}

/// Host resources a previous process handed over, offered to the models
/// about to be built: a model that would open one (a pty, a listening
/// socket) claims it by key instead, so a `screen` on the pty and a peer on
/// the socket stay connected.
public enum HostResourceAdoption {
    private nonisolated(unsafe) static var offered: [HostResource] = []
    private nonisolated(unsafe) static var owning = true
    private nonisolated(unsafe) static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()

    /// Runs `body` (which builds the device) with `resources` on offer and
    /// returns the ones nothing claimed (the caller's to close). `owning`:
    /// false while only checking a handover, when the models must leave
    /// the files (socket paths) alone, since the old process still serves
    /// on them. The resources are given up: claimed ones are the model's,
    /// and on a throw every unclaimed one is closed.
    public static func offering<T>(_ resources: [HostResource], owning: Bool, _ body: () throws(DeviceError) -> T)
        throws(DeviceError) -> (T, unclaimed: [HostResource]) {
        pthread_mutex_lock(lock)
        offered = resources
        self.owning = owning
        defer {
            offered = []
            self.owning = true
            pthread_mutex_unlock(lock)
        }
        do {
            let value = try body()
            return (value, offered)
        } catch {
            for r in offered { r.closeAll() }
            throw error
        }
    }

    /// The offered resource `key`, and whether the claimant owns its files.
    public static func claim(key: String) -> (resource: HostResource, owning: Bool)? {
        guard let i = offered.firstIndex(where: { $0.key == key }) else { return nil }
        return (offered.remove(at: i), owning)
    }
}
