@_exported import VFIOUser
import Glibc
import SystemPackage

/// The contract between a device model and the vfio-user server.
///
/// A device model is a plain state machine: the server calls it on the
/// connection's thread (the device's owner), one call at a time.
///
/// On the register-access path (`read`, `write`, and every other call a
/// request makes: `reset`, `saveState`, `restoreState`, `setRunning`) a
/// model does no I/O of its own: it reads and writes no descriptor and
/// never waits on the host. What such a call can still cost in syscalls
/// is the server's, made on the same thread through the two small
/// protocols below:
/// - `InterruptSink`: an edge the client has not masked is a write(2) to
///   the client's eventfd;
/// - `DMAAccess`: a copy from a window the client mapped, or, for memory it
///   did not map, a DMA_READ/DMA_WRITE round trip on the socket, which
///   waits for the client's reply.
/// A model that reads the time reads CLOCK_MONOTONIC (`monotonicNanoseconds`,
/// served from the vDSO on the usual clock sources).
///
/// Host-side I/O (a pty, a socket the model owns) happens only in
/// `serviceEvent`, which the owner thread calls when poll(2) says one of
/// the model's descriptors is ready. An access that has output for the
/// host queues it and says so in `pollRequests` (POLLOUT); the server asks
/// `pollRequests` afresh before every wait, so the next poll includes it
/// and the bytes go out on the owner's next pass, never inside the access.
/// A host that stops reading therefore costs the guest nothing but the
/// model's own queue limit.
///
/// The model never sees the client's socket or its eventfds.

/// One region as DEVICE_GET_REGION_INFO describes it.
public struct Region: Sendable {
    /// Whether `count` bytes at `offset` lie inside the region (overflow safe).
    @inlinable
    public func contains(offset: UInt64, count: Int) -> Bool {
        offset <= size && UInt64(count) <= size - offset
    }

    /// An mmap-able window inside the region, relative to its start.
    public struct Area: Sendable, Equatable {
        public var offset: UInt64
        public var size: UInt64
        public init(offset: UInt64, size: UInt64) { self.offset = offset; self.size = size }
    }

    /// Memory the client may map: a file descriptor (usually a memfd, which
    /// the device owns; replies send a copy), the offset of the region
    /// inside it, and the mappable areas.
    public struct Mapping: Sendable {
        public var fd: FileDescriptor
        public var fileOffset: UInt64
        /// Empty means the whole region.
        public var areas: [Area]
        public init(fd: FileDescriptor, fileOffset: UInt64 = 0, areas: [Area] = []) {
            self.fd = fd; self.fileOffset = fileOffset; self.areas = areas
        }
    }

    public var size: UInt64
    public var readable: Bool
    public var writable: Bool
    public var mapping: Mapping?
    /// VFIO_REGION_INFO_CAP_TYPE (type, subtype) for device-specific regions.
    public var type: (type: UInt32, subtype: UInt32)?

    public init(size: UInt64, readable: Bool = true, writable: Bool = true, mapping: Mapping? = nil,
                type: (type: UInt32, subtype: UInt32)? = nil) {
        self.size = size; self.readable = readable; self.writable = writable
        self.mapping = mapping; self.type = type
    }

    /// A region the device does not have (size 0, no access).
    public static let absent = Region(size: 0, readable: false, writable: false)
}

/// One IRQ index as DEVICE_GET_IRQ_INFO describes it.
public struct IRQ: Sendable, Equatable {
    public var count: UInt32
    /// Masking supported (INTx): MASK/UNMASK are accepted.
    public var maskable: Bool
    /// Each trigger masks the line until the client unmasks it (INTx).
    public var automasked: Bool
    /// The vector set is configured as a whole (MSI).
    public var noResize: Bool
    public init(count: UInt32, maskable: Bool = false, automasked: Bool = false, noResize: Bool = false) {
        self.count = count; self.maskable = maskable; self.automasked = automasked; self.noResize = noResize
    }
    public static let none = IRQ(count: 0)
    /// A level-triggered INTx line as PCI devices have.
    public static let intx = IRQ(count: 1, maskable: true, automasked: true)
    /// The error (AER) notification index, one vector, as kernel vfio-pci offers it.
    public static let error = IRQ(count: 1)
    /// The device request index, one vector: the server asks the VMM to release the device.
    public static let request = IRQ(count: 1)
}

/// VFIO_REGION_INFO_CAP_TYPE values for device-specific regions.
public enum RegionType {
    /// VFIO_REGION_TYPE_GFX.
    public static let graphics: UInt32 = 1
    /// VFIO_REGION_SUBTYPE_GFX_EDID.
    public static let graphicsEDID: UInt32 = 1
    /// VFIO_REGION_TYPE_PCI_VENDOR_TYPE: a vendor's own type is this bit
    /// ORed with its PCI vendor id; the subtype is the vendor's to define.
    public static let pciVendorType: UInt32 = 1 << 31
    public static func vendor(_ vendorID: UInt16) -> UInt32 { pciVendorType | UInt32(vendorID) }
}

/// How a device model raises interrupts. The server implements it with
/// eventfds; tests implement it with a spy.
public protocol InterruptSink: AnyObject {
    /// An edge on `vector` of `index`. INTx edges raised while the line is
    /// masked are remembered and delivered at unmask.
    func trigger(_ index: IRQIndex, vector: Int)
    /// The level of the INTx line. A rising level fires the line; a level
    /// still high when the client unmasks fires it again.
    func setINTxLevel(_ asserted: Bool)
}

/// Guest memory by IOVA, for devices that do DMA.
public protocol DMAAccess: AnyObject {
    /// Copies guest memory at `iova` into `buffer`. Throws an errno.
    func read(iova: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(DeviceError)
    /// Copies `data` into guest memory at `iova`. Throws an errno.
    func write(iova: UInt64, from data: UnsafeRawBufferPointer) throws(DeviceError)
}

/// A device-level failure carried back as an errno.
public struct DeviceError: Error, Sendable, Equatable, CustomStringConvertible {
    public let errno: Int32
    public let message: String
    public init(_ errno: Int32, _ message: String) { self.errno = errno; self.message = message }
    public var description: String { "\(message) (errno \(errno))" }
}

/// What the server needs from a device model.
public protocol VFIODevice: AnyObject {
    /// Regions by index; the count is DEVICE_GET_INFO's num_regions (≥ 9 for PCI).
    var regions: [Region] { get }
    /// IRQ indices (5 for PCI: INTx, MSI, MSI-X, ERR, REQ).
    var irqs: [IRQ] { get }
    /// Whether DEVICE_RESET is supported (advertised in GET_INFO flags).
    var supportsReset: Bool { get }

    /// Reads `buffer.count` bytes at `offset` of `region`. The server has
    /// checked that the access lies inside a readable region; a model still
    /// refuses one outside its regions (EINVAL), the second line of defence
    /// (`accessible(region:offset:count:)`). Returns 0 or an errno.
    func read(region: Int, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int32
    /// Writes `data` at `offset` of `region` (range checked, by the server and again by the model). Returns 0 or an errno.
    func write(region: Int, offset: UInt64, data: UnsafeRawBufferPointer) -> Int32
    /// Returns every register to its power-on state (DEVICE_RESET).
    func reset()
    /// Whether reading `count` bytes at `offset` of `region` (an access the
    /// server has checked, as for `read`) changes the device (a FIFO
    /// popped, a status bit cleared): only then does a crash-surviving
    /// server record the read and save its state before answering. Asked
    /// only when state is kept (`--fd-store`, `--supervise`); the default,
    /// true, is always safe.
    func readChangesState(region: Int, offset: UInt64, count: Int) -> Bool

    /// Set by the server while a client is attached; nil otherwise.
    var interrupts: InterruptSink? { get set }
    /// Set by the server while a client is attached; nil otherwise.
    var dma: DMAAccess? { get set }

    /// Model, state version, type and creation parameters written at the
    /// head of a migration stream; nil = not migratable.
    var migrationIdentity: MigrationIdentity? { get }
    /// The state versions `restoreState` reads (older ones within it too).
    var readableStateVersions: ClosedRange<Int> { get }
    /// Device state for migration, in the model's own versioned format.
    func saveState() -> [UInt8]
    /// Restores state of `version` (one of `readableStateVersions`, already
    /// checked); throws with a reason on a bad stream.
    func restoreState(_ bytes: [UInt8], version: Int) throws(DeviceError)

    /// Whether the device has host-side descriptors (pty, socket backends)
    /// for the server to poll. Read on every message, so keep it cheap (a
    /// stored constant); false means `pollRequests` is never asked, and the
    /// server's loop costs such a device nothing per message.
    var hasHostEvents: Bool { get }
    /// The descriptors to poll now, with poll(2) events; asked only when
    /// `hasHostEvents`, before every wait of the owner thread, so it
    /// reflects what the last access changed (POLLOUT while output is
    /// queued, POLLIN only while there is room for input). No syscalls.
    func pollRequests() -> [(fd: Int32, events: Int16)]
    /// A polled descriptor is ready; called on the owner thread, between
    /// requests. The only place a model reads or writes its descriptors.
    func serviceEvent(fd: Int32, revents: Int16)
    /// A CLOCK_MONOTONIC time (ns) at which `timerExpired` must run, if any
    /// (the UART's receive timeout).
    var timerDeadline: UInt64? { get }
    func timerExpired()
    /// Called when the migration state machine stops or restarts the device.
    func setRunning(_ running: Bool)
}

extension VFIODevice {
    public func readChangesState(region: Int, offset: UInt64, count: Int) -> Bool { true }
    public var hasHostEvents: Bool { false }
    public func pollRequests() -> [(fd: Int32, events: Int16)] { [] }
    public func serviceEvent(fd: Int32, revents: Int16) {}
    public var timerDeadline: UInt64? { nil }
    public func timerExpired() {}
    public func setRunning(_ running: Bool) {}
    public var migrationIdentity: MigrationIdentity? { nil }
    public var readableStateVersions: ClosedRange<Int> { (migrationIdentity?.version ?? 1)...(migrationIdentity?.version ?? 1) }
    public func saveState() -> [UInt8] { [] }
    public func restoreState(_ bytes: [UInt8], version: Int) throws(DeviceError) {
        throw DeviceError(EOPNOTSUPP, "device does not support migration")
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

extension VFIODevice {
    /// Whether `count` bytes at `offset` of region `index` exist: what a
    /// model checks before it trusts an offset (the server checks first).
    /// Inlinable, so that a model's own stored `regions` is read in place:
    /// it runs on every register access.
    /// Only the region's size is read: copying a `Region` out of the array
    /// would retain what its mapping holds.
    @inlinable
    public func accessible(region index: Int, offset: UInt64, count: Int) -> Bool {
        regions.withUnsafeBufferPointer { all in
            guard index >= 0 && index < all.count else { return false }
            let size = all[index].size
            return offset <= size && UInt64(count) <= size - offset
        }
    }
}
