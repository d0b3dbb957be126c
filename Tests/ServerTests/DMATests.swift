import CShim
import Glibc
import TestDevice
import Testing
import VFIOUser
import VFIOUserClient

@Suite("DMA_MAP / DMA_UNMAP and device DMA")
struct DMATests {
    func dma(_ c: VFIOUserClient, command: UInt32, address: UInt64, length: UInt32) throws -> UInt32 {
        try c.write32(region: 0, offset: TestDevice.Register.dmaAddress, UInt32(truncatingIfNeeded: address))
        try c.write32(region: 0, offset: TestDevice.Register.dmaAddress + 4, UInt32(address >> 32))
        try c.write32(region: 0, offset: TestDevice.Register.dmaLength, length)
        try c.write32(region: 0, offset: TestDevice.Register.dmaCommand, command)
        return try c.read32(region: 0, offset: TestDevice.Register.dmaStatus)
    }

    @Test func deviceReachesAWindowMappedWithADescriptor() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        let fd = umdev_memfd("guest-ram")
        defer { close(fd) }
        #expect(ftruncate(fd, 1 << 20) == 0)
        let ram = try #require(mmap(nil, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0))
        defer { munmap(ram, 1 << 20) }
        // Window [0x100000, +64 KiB) at file offset 0x10000.
        try c.dmaMap(address: 0x10_0000, size: 0x1_0000, fd: fd, offset: 0x1_0000)
        for i in 0..<16 { ram.storeBytes(of: UInt8(i * 3), toByteOffset: 0x1_0000 + 0x200 + i, as: UInt8.self) }
        #expect(try dma(c, command: 1, address: 0x10_0200, length: 16) == 0)
        #expect(try c.read(region: 0, offset: TestDevice.Register.dmaBuffer, count: 16) == (0..<16).map { UInt8($0 * 3) })
        try c.write(region: 0, offset: TestDevice.Register.dmaBuffer, bytes: [9, 8, 7, 6])
        #expect(try dma(c, command: 2, address: 0x10_ff00, length: 4) == 0)
        #expect(ram.load(fromByteOffset: 0x1_ff00, as: UInt32.self) == 0x0607_0809)
        // Outside the window: EFAULT; straddling its end too.
        #expect(try dma(c, command: 1, address: 0x20_0000, length: 4) == UInt32(EFAULT))
        #expect(try dma(c, command: 1, address: 0x10_fffe, length: 4) == UInt32(EFAULT))
        try c.dmaUnmap(address: 0x10_0000, size: 0x1_0000)
        #expect(try dma(c, command: 1, address: 0x10_0200, length: 4) == UInt32(EFAULT))
    }

    @Test func windowWithoutADescriptorGoesThroughDMAMessages() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 8)
        defer { memory.deallocate() }
        for i in 0..<8192 { memory[i] = UInt8(i & 0xff) }
        c.registerDMAMemory(iova: 0xfffc_0000, memory: memory)
        try c.dmaMap(address: 0xfffc_0000, size: 0x2000, flags: VFIO.dmaMapRead | VFIO.dmaMapWrite)
        #expect(try dma(c, command: 1, address: 0xfffc_0100, length: 8) == 0)
        #expect(c.serverDMARequests == 1)
        #expect(try c.read(region: 0, offset: TestDevice.Register.dmaBuffer, count: 8) == (0..<8).map { UInt8($0) })
        try c.write(region: 0, offset: TestDevice.Register.dmaBuffer, bytes: [0xaa, 0xbb])
        #expect(try dma(c, command: 2, address: 0xfffc_1000, length: 2) == 0)
        #expect(memory[0x1000] == 0xaa && memory[0x1001] == 0xbb)
        #expect(c.serverDMARequests == 2)
    }

    @Test func readOnlyWindowRefusesDeviceWrites() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        try c.dmaMap(address: 0x4000, size: 0x1000, flags: VFIO.dmaMapRead)
        #expect(try dma(c, command: 2, address: 0x4000, length: 4) == UInt32(EFAULT))
    }

    @Test func mapAndUnmapErrors() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        try c.dmaMap(address: 0x10000, size: 0x4000)
        #expect(throws: ClientError.remote(EEXIST)) { try c.dmaMap(address: 0x10000, size: 0x4000) }
        #expect(throws: ClientError.remote(EEXIST)) { try c.dmaMap(address: 0x12000, size: 0x4000) }
        #expect(throws: ClientError.remote(EEXIST)) { try c.dmaMap(address: 0xf000, size: 0x2000) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.dmaMap(address: 0x20000, size: 0) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.dmaMap(address: 0x20001, size: 0x1000) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.dmaMap(address: 0x20000, size: 0x1001) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.dmaMap(address: UInt64.max - 0xfff, size: 0x2000) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.dmaMap(address: 0x20000, size: 0x1000, flags: 0x10) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.dmaMap(address: 0x20000, size: 0x1000, offset: 0x1000) }
        // A file too short for the window.
        let fd = umdev_memfd("short")
        defer { close(fd) }
        _ = ftruncate(fd, 0x1000)
        #expect(throws: ClientError.remote(EINVAL)) { try c.dmaMap(address: 0x40000, size: 0x2000, fd: fd) }
        #expect(throws: ClientError.remote(ENOENT)) { try c.dmaUnmap(address: 0x10000, size: 0x1000) }
        #expect(throws: ClientError.remote(ENOENT)) { try c.dmaUnmap(address: 0x30000, size: 0x1000) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.dmaUnmap(address: 0x10000, size: 0x4000, flags: 0x8) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.dmaUnmap(address: 0x10000, size: 0x4000, flags: VFIO.dmaUnmapAll) }
        #expect(throws: ClientError.remote(ENOTSUP)) { try c.dmaUnmap(address: 0x10000, size: 0x4000, flags: VFIO.dmaUnmapGetDirtyBitmap) }
        #expect(try errnoOf(c, rawMessage(command: 2, payload: le32(24) + le32(3) + le64(0) + le64(0x1000))) == EINVAL)
        #expect(try errnoOf(c, rawMessage(command: 2, payload: le32(16) + le32(3) + le64(0) + le64(0x50000) + le64(0x1000))) == EINVAL)
        #expect(try errnoOf(c, rawMessage(command: 3, payload: le32(16) + le32(0) + le64(0x10000) + le64(0x4000))) == EINVAL)
        // The reply to a good unmap echoes the request (QEMU accepts up to 24 bytes).
        let r = try c.request(.dmaUnmap, payload: le32(24) + le32(0) + le64(0x10000) + le64(0x4000))
        #expect(r.payload == le32(24) + le32(0) + le64(0x10000) + le64(0x4000))
        try c.dmaMap(address: 0x10000, size: 0x1000)
        try c.dmaMap(address: 0x11000, size: 0x1000)
        try c.dmaUnmap(address: 0, size: 0, flags: VFIO.dmaUnmapAll)
        try c.dmaMap(address: 0x10000, size: 0x2000)
        expectAlive(c)
    }

    @Test func maxDMAMapsIsHonoured() throws {
        let s = try MemoryServer()
        let c = try s.connect(negotiate: false)
        let caps = try c.negotiate(json: #"{"capabilities":{"max_dma_maps":3}}"#)
        #expect(caps.maxDMAMaps == 3)
        for i in 0..<3 { try c.dmaMap(address: UInt64(i) * 0x1000, size: 0x1000) }
        #expect(throws: ClientError.remote(ENOSPC)) { try c.dmaMap(address: 0x10000, size: 0x1000) }
        try c.dmaUnmap(address: 0, size: 0x1000)
        try c.dmaMap(address: 0x10000, size: 0x1000)
    }

    @Test func pipelinedMapsAreAppliedInOrder() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        // Four requests in flight at once, as QEMU sends a memory transaction.
        var batch: [UInt8] = []
        let ops: [(UInt16, [UInt8])] = [
            (2, le32(32) + le32(3) + le64(0) + le64(0) + le64(0xc0000)),
            (3, le32(24) + le32(0) + le64(0) + le64(0xc0000)),
            (2, le32(32) + le32(3) + le64(0) + le64(0) + le64(0xd8000)),
            (2, le32(32) + le32(1) + le64(0) + le64(0xd8000) + le64(0x8000)),
        ]
        for (i, op) in ops.enumerated() { batch += rawMessage(id: UInt16(100 + i), command: op.0, payload: op.1) }
        try c.sendRaw(batch)
        for i in 0..<4 {
            let r = try c.receiveMessage()
            #expect(r.header.messageID == UInt16(100 + i) && !r.header.isError)
        }
    }
}
