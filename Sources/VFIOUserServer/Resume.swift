import Descriptors
import Glibc
import PCI
import SystemPackage
import VFIOUser

/// Everything a connection is besides its socket, taken between messages:
/// what the client negotiated, the bytes and descriptors read and not yet
/// handled, its DMA windows and its interrupt wiring. A live upgrade
/// carries it to the next process (Protocol/HANDOVER.md), which resumes
/// the connection from it as if nothing had happened.
///
/// Descriptors are numbers. Taken from a running endpoint they are still
/// the endpoint's (it keeps serving if the upgrade fails); given to
/// `Endpoint.resume` they are the endpoint's from then on.
public struct ConnectionState: Sendable {
    /// The client's VERSION capabilities; nil before VERSION.
    public var client: Capabilities?
    /// Most descriptors a message may carry, as the VERSION reply named it.
    public var fdLimit: Int
    /// Most DMA windows, as the VERSION reply named it.
    public var maxWindows: Int
    /// The id of the server's last DMA_READ/DMA_WRITE.
    public var lastRequestID: UInt16
    /// The INTx level the device last reported.
    public var intxLevel: Bool
    /// What the framer held.
    public var framer: FramerState
    public var windows: [DMAWindowRecord]
    public var vectors: [InterruptState.VectorRecord]

    public init(client: Capabilities?, fdLimit: Int, maxWindows: Int, lastRequestID: UInt16, intxLevel: Bool,
                framer: FramerState, windows: [DMAWindowRecord], vectors: [InterruptState.VectorRecord]) {
        self.client = client; self.fdLimit = fdLimit; self.maxWindows = maxWindows; self.lastRequestID = lastRequestID
        self.intxLevel = intxLevel; self.framer = framer; self.windows = windows; self.vectors = vectors
    }

    /// `MessageFramer.State`, Sendable: bytes, the descriptors waiting for
    /// their message, where that message starts, and what is left to skip.
    public struct FramerState: Sendable, Equatable {
        public var bytes: [UInt8]
        public var pendingFDs: [Int32]
        public var pendingFDOwner: Int
        public var pendingOverflow: Bool
        public var discard: Int
        public init(bytes: [UInt8], pendingFDs: [Int32], pendingFDOwner: Int, pendingOverflow: Bool, discard: Int) {
            self.bytes = bytes; self.pendingFDs = pendingFDs; self.pendingFDOwner = pendingFDOwner
            self.pendingOverflow = pendingOverflow; self.discard = discard
        }
    }

    /// One DMA window: the client's DMA_MAP and the descriptor it came with (-1: none).
    public struct DMAWindowRecord: Sendable, Equatable {
        public var map: DMAMap
        public var fd: Int32
        public init(map: DMAMap, fd: Int32) { self.map = map; self.fd = fd }
    }

    /// Every descriptor named, in one list (the handover's order).
    public var descriptors: [Int32] {
        framer.pendingFDs + windows.map(\.fd).filter { $0 >= 0 }
            + vectors.flatMap { [$0.trigger, $0.unmask, $0.mask] }.filter { $0 >= 0 }
    }

    /// Closes every descriptor named: what a refused resume does with what it has not adopted.
    func closeAll() {
        for fd in descriptors { close(fd) }
    }
}

extension Endpoint {
    /// The connection's state, between messages (the session is parked or
    /// has not started). Descriptors stay this endpoint's.
    public func connectionState() -> ConnectionState {
        precondition(!transport.hasDeferred, "connection state taken while waiting for a DMA reply")
        transport.closeFDs()
        let f = transport.framer.snapshot()
        return ConnectionState(
            client: client, fdLimit: fdLimit, maxWindows: dma.maxWindows, lastRequestID: nextRequestID,
            intxLevel: interrupts.intxLevel,
            framer: .init(bytes: f.bytes, pendingFDs: f.pendingFDs, pendingFDOwner: f.pendingFDOwner,
                          pendingOverflow: f.pendingOverflow, discard: f.discard),
            windows: dma.windows.map {
                .init(map: DMAMap(flags: $0.flags, offset: $0.fileOffset, address: $0.address, size: $0.size), fd: $0.fd)
            },
            vectors: interrupts.records)
    }

    /// Takes over a connection another process served: negotiated state,
    /// DMA windows (mapped again, the same memory) and interrupt wiring,
    /// each checked as a client's request would be. Called before `run`,
    /// on an endpoint made with `MessageFramer(resuming:)` from the same
    /// state. On a refusal every descriptor the state names that was not
    /// yet adopted is closed, and the error says what was wrong.
    public func resume(_ s: ConnectionState) throws(DeviceError) {
        var remainingWindows = s.windows[...]
        var remainingVectors = s.vectors[...]
        func closeRest() {
            for w in remainingWindows where w.fd >= 0 { close(w.fd) }
            for v in remainingVectors { for fd in [v.trigger, v.unmask, v.mask] where fd >= 0 { close(fd) } }
        }
        guard (1...Limits.maxMessageFDs).contains(s.fdLimit), (1...Limits.maxDMAMaps).contains(s.maxWindows),
              s.windows.count <= s.maxWindows else {
            closeRest()
            throw DeviceError(EINVAL, "handed-over connection limits are out of range")
        }
        client = s.client
        fdLimit = s.fdLimit
        dma.maxWindows = s.maxWindows
        nextRequestID = s.lastRequestID
        interrupts.adoptLevel(s.intxLevel)
        while let w = remainingWindows.popFirst() {
            let fd = w.fd >= 0 ? OwnedDescriptor(adopting: FileDescriptor(rawValue: w.fd)) : nil
            do throws(ProtocolError) { try dma.adopt(w.map, fd: fd) } catch {
                closeRest()
                throw DeviceError(error.errno, "handed-over DMA window at \(w.map.address): \(error.reason)")
            }
        }
        while let v = remainingVectors.popFirst() {
            func own(_ fd: Int32) -> OwnedDescriptor? { fd >= 0 ? OwnedDescriptor(adopting: FileDescriptor(rawValue: fd)) : nil }
            do { try interrupts.adopt(v, trigger: own(v.trigger), unmask: own(v.unmask), mask: own(v.mask)) } catch {
                closeRest()
                throw error
            }
        }
        interrupts.watchedChanged = false
    }
}

extension MessageFramer {
    /// A framer continuing from a handed-over state (it takes the descriptors).
    public convenience init(resuming s: ConnectionState.FramerState) throws(TransportEnd) {
        try self.init(resuming: State(bytes: s.bytes, pendingFDs: s.pendingFDs, pendingFDOwner: s.pendingFDOwner,
                                      pendingOverflow: s.pendingOverflow, discard: s.discard))
    }
}
