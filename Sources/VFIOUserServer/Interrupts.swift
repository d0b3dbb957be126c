import Descriptors
import Glibc
import Locking
import PCI
import SystemPackage
import VFIOUser

/// The server side of DEVICE_SET_IRQS: which eventfd each vector signals,
/// mask state, and what fired while masked. Implements `InterruptSink`, so a
/// device raises an interrupt without knowing how it is delivered.
///
/// Owned by one connection thread; no locking.
public final class InterruptState: InterruptSink {
    struct Vector {
        var trigger: Int32 = -1
        /// eventfd whose signal unmasks (KVM resample) / masks this vector.
        var unmaskFD: Int32 = -1
        var maskFD: Int32 = -1
        var masked = false
        /// An edge arrived while masked (or with no eventfd attached).
        var pending = false
    }

    let irqs: [IRQ]
    @exclusivity(unchecked) private var vectors: [[Vector]]
    /// The REQ vector's eventfd, shared with other threads (the daemon asks
    /// the client to release the device through it).
    let requestLine: RequestLine?
    /// Current INTx level as the device reports it.
    @exclusivity(unchecked) public private(set) var intxLevel = false
    /// Called when the set of watched descriptors changes.
    @exclusivity(unchecked) var watchedChanged = false

    init(irqs: [IRQ], requestLine: RequestLine? = nil) {
        self.irqs = irqs
        self.requestLine = requestLine
        vectors = irqs.map { [Vector](repeating: Vector(), count: Int($0.count)) }
    }

    /// Keeps the shared REQ descriptor in step with vector 0 of REQ.
    private func publishRequestLine(_ i: Int) {
        guard i == IRQIndex.req.rawValue, let requestLine, !vectors[i].isEmpty else { return }
        let trigger = vectors[i][0].trigger
        requestLine.attach(trigger >= 0 ? FileDescriptor(rawValue: trigger) : nil)
    }

    deinit { closeAll() }

    /// Closes every descriptor (client gone) and forgets masks and pending edges.
    func closeAll() {
        for i in vectors.indices { releaseAll(i) }
    }

    /// Closes the descriptors of every vector of index `i` and resets them.
    private func releaseAll(_ i: Int) {
        for j in vectors[i].indices {
            let v = vectors[i][j]
            if v.trigger >= 0 { close(v.trigger) }
            if v.unmaskFD >= 0 { close(v.unmaskFD) }
            if v.maskFD >= 0 { close(v.maskFD) }
            vectors[i][j] = Vector()
        }
        publishRequestLine(i)
        watchedChanged = true
    }

    /// Descriptors to poll: (fd, index, vector, isUnmask).
    var watched: [(fd: Int32, index: Int, vector: Int, unmask: Bool)] {
        var out: [(Int32, Int, Int, Bool)] = []
        for i in vectors.indices {
            for j in vectors[i].indices {
                if vectors[i][j].unmaskFD >= 0 { out.append((vectors[i][j].unmaskFD, i, j, true)) }
                if vectors[i][j].maskFD >= 0 { out.append((vectors[i][j].maskFD, i, j, false)) }
            }
        }
        return out
    }

    // MARK: InterruptSink

    public func trigger(_ index: IRQIndex, vector: Int) {
        let i = index.rawValue
        guard i < vectors.count, vector >= 0, vector < vectors[i].count else { return }
        raise(i, vector)
    }

    /// An edge on vector j of index i, from the device or a client TRIGGER.
    private func raise(_ i: Int, _ j: Int) {
        if vectors[i][j].masked || vectors[i][j].trigger < 0 {
            // Remembered for a maskable line (delivered at unmask or when an
            // eventfd is attached); an edge on an unwired MSI vector is lost,
            // as on hardware with MSI disabled.
            if irqs[i].maskable { vectors[i][j].pending = true }
            return
        }
        fire(i, j)
    }

    public func setINTxLevel(_ asserted: Bool) {
        let rising = asserted && !intxLevel
        intxLevel = asserted
        if rising {
            trigger(.intx, vector: 0)
        } else if !asserted, !vectors.isEmpty, !vectors[0].isEmpty {
            // The condition went away before the client unmasked: nothing to deliver.
            vectors[0][0].pending = false
        }
    }

    private func fire(_ i: Int, _ j: Int) {
        var one: UInt64 = 1
        _ = write(vectors[i][j].trigger, &one, 8)
        vectors[i][j].pending = false
        if irqs[i].automasked { vectors[i][j].masked = true }
    }

    // MARK: SET_IRQS

    /// Applies one validated SET_IRQS with the eventfds that came with it:
    /// those it keeps become the vectors'; the rest close with the batch.
    func apply(_ s: SetIRQs, fds: consuming ReceivedDescriptors) throws(ProtocolError) {

        guard Int(s.index) < irqs.count else { throw .invalid("IRQ index out of range") }
        let i = Int(s.index)
        let irq = irqs[i]
        let action = s.action
        if s.count == 0 {
            // TRIGGER|DATA_NONE, start 0, count 0: disable the whole index.
            releaseAll(i)
            return
        }
        guard UInt64(s.start) + UInt64(s.count) <= UInt64(irq.count) else { throw .invalid("SET_IRQS range beyond the index's vectors") }
        if i == IRQIndex.err.rawValue || i == IRQIndex.req.rawValue {
            guard action == VFIO.irqSetActionTrigger else { throw .invalid("ERR/REQ only take TRIGGER") }
        }
        if action != VFIO.irqSetActionTrigger {
            guard irq.maskable else { throw .invalid("IRQ index is not maskable") }
        }
        let range = Int(s.start)..<Int(s.start + s.count)

        func selected(_ k: Int) -> Bool {
            s.dataType != VFIO.irqSetDataBool || s.bools[k - Int(s.start)] != 0
        }

        switch (action, s.dataType) {
        case (VFIO.irqSetActionTrigger, VFIO.irqSetDataEventfd):
            for (n, j) in range.enumerated() {
                if vectors[i][j].trigger >= 0 { close(vectors[i][j].trigger) }
                // The vector owns it from here (closed on release or replacement).
                vectors[i][j].trigger = fds.take(n)?.release().rawValue ?? -1
                if vectors[i][j].trigger >= 0 && vectors[i][j].pending && !vectors[i][j].masked {
                    fire(i, j)
                }
            }
            publishRequestLine(i)
        case (VFIO.irqSetActionTrigger, _):
            for j in range where selected(j) { raise(i, j) }
        case (VFIO.irqSetActionMask, VFIO.irqSetDataEventfd), (VFIO.irqSetActionUnmask, VFIO.irqSetDataEventfd):
            let unmask = action == VFIO.irqSetActionUnmask
            for (n, j) in range.enumerated() {
                let old = unmask ? vectors[i][j].unmaskFD : vectors[i][j].maskFD
                if old >= 0 { close(old) }
                let fd = fds.take(n)?.release().rawValue ?? -1
                if unmask { vectors[i][j].unmaskFD = fd } else { vectors[i][j].maskFD = fd }
            }
            watchedChanged = true
        case (VFIO.irqSetActionMask, _):
            for j in range where selected(j) { mask(i, j) }
        default: // UNMASK with NONE/BOOL
            for j in range where selected(j) { unmask(i, j) }
        }
    }

    /// Clears the mask; an edge that arrived while masked, or an INTx level
    /// still high, fires again now so nothing is lost.
    func unmask(_ i: Int, _ j: Int) {
        vectors[i][j].masked = false
        let levelHigh = i == IRQIndex.intx.rawValue && intxLevel
        if (vectors[i][j].pending || levelHigh) && vectors[i][j].trigger >= 0 { fire(i, j) }
    }

    func mask(_ i: Int, _ j: Int) { vectors[i][j].masked = true }

    // MARK: Handover

    /// One vector's wiring and state, as a live upgrade carries it: the
    /// descriptors by number (still this table's), -1 where none.
    public struct VectorRecord: Equatable, Sendable {
        public var index: Int
        public var vector: Int
        public var trigger: Int32
        public var unmask: Int32
        public var mask: Int32
        public var masked: Bool
        public var pending: Bool
        public init(index: Int, vector: Int, trigger: Int32, unmask: Int32, mask: Int32, masked: Bool, pending: Bool) {
            self.index = index; self.vector = vector; self.trigger = trigger; self.unmask = unmask; self.mask = mask
            self.masked = masked; self.pending = pending
        }
    }

    /// Every vector that is not as a fresh connection has it.
    public var records: [VectorRecord] {
        var out: [VectorRecord] = []
        for i in vectors.indices {
            for (j, v) in vectors[i].enumerated()
            where v.trigger >= 0 || v.unmaskFD >= 0 || v.maskFD >= 0 || v.masked || v.pending {
                out.append(VectorRecord(index: i, vector: j, trigger: v.trigger, unmask: v.unmaskFD, mask: v.maskFD,
                                        masked: v.masked, pending: v.pending))
            }
        }
        return out
    }

    /// Takes over a vector the previous process had wired, with its
    /// descriptors (this table's from here, or closed when refused). The
    /// rules SET_IRQS applies hold: the vector must exist, and only a
    /// maskable index has mask state or mask/unmask eventfds.
    func adopt(_ r: VectorRecord, trigger: consuming OwnedDescriptor?, unmask: consuming OwnedDescriptor?,
               mask: consuming OwnedDescriptor?) throws(DeviceError) {
        guard r.index >= 0, r.index < irqs.count, r.vector >= 0, r.vector < vectors[r.index].count else {
            throw DeviceError(EINVAL, "handed-over IRQ vector \(r.index).\(r.vector) does not exist on this device")
        }
        let hasMaskState = unmask != nil || mask != nil || r.masked || r.pending
        guard irqs[r.index].maskable || !hasMaskState else {
            throw DeviceError(EINVAL, "handed-over IRQ index \(r.index) is not maskable")
        }
        var v = vectors[r.index][r.vector]
        guard v.trigger < 0, v.unmaskFD < 0, v.maskFD < 0 else { throw DeviceError(EINVAL, "IRQ vector \(r.index).\(r.vector) handed over twice") }
        v.trigger = trigger?.release().rawValue ?? -1
        v.unmaskFD = unmask?.release().rawValue ?? -1
        v.maskFD = mask?.release().rawValue ?? -1
        v.masked = r.masked
        v.pending = r.pending
        vectors[r.index][r.vector] = v
        publishRequestLine(r.index)
        watchedChanged = true
    }

    /// The INTx level the device last reported, carried over so that the
    /// next change is seen as the edge it is.
    func adoptLevel(_ asserted: Bool) { intxLevel = asserted }

    /// A watched mask/unmask eventfd became readable.
    func watchedFired(fd: Int32, index: Int, vector: Int, unmask isUnmask: Bool) {
        var counter: UInt64 = 0
        _ = read(fd, &counter, 8)
        if isUnmask { unmask(index, vector) } else { mask(index, vector) }
    }
}

/// The REQ interrupt ("please release this device") as other threads can
/// raise it: a duplicate of the eventfd the client attached, under a lock
/// that only SET_IRQS on REQ and a release request ever take.
public final class RequestLine: Sendable {
    private let fd = Locked<Int32>(-1)

    public init() {}

    /// Replaces the descriptor with a duplicate of `trigger` (which stays
    /// its owner's); nil detaches.
    func attach(_ trigger: FileDescriptor?) {
        let copy = trigger.map { fcntl($0.rawValue, F_DUPFD_CLOEXEC, 0) } ?? -1
        let old = fd.withLock { current -> Int32 in
            defer { current = copy }
            return current
        }
        if old >= 0 { close(old) }
    }

    /// Signals the client's REQ eventfd; false when it attached none.
    @discardableResult
    public func signal() -> Bool {
        fd.withLock { current in
            guard current >= 0 else { return false }
            var one: UInt64 = 1
            return write(current, &one, 8) == 8
        }
    }

    /// Whether a client attached a REQ eventfd.
    public var isAttached: Bool { fd.withLock { $0 >= 0 } }

    deinit { attach(nil) }
}
