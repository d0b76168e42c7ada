#if canImport(Glibc)
import Glibc
#endif
@testable import KernelCore
import XCTest

/// sd_notify's datagrams: the lines of each state, the addresses systemd hands over (a path, `@abstract`), and one
/// datagram actually received on a socket of each kind.
final class SystemdNotifyTests: XCTestCase {
    func testMessagesAreTheProtocolsLines() {
        XCTAssertEqual(SystemdNotify.message([.ready, .mainPID(42)]), "READY=1\nMAINPID=42")
        XCTAssertEqual(SystemdNotify.message([.reloading(monotonicMicroseconds: 1_234_567)]),
                       "RELOADING=1\nMONOTONIC_USEC=1234567")
        XCTAssertEqual(SystemdNotify.message([.stopping]), "STOPPING=1")
        XCTAssertEqual(SystemdNotify.message([.status("reload failed:\nbad key")]), "STATUS=reload failed: bad key")
    }

    func testMonotonicClockMovesForward() {
        let first = SystemdNotify.monotonicMicroseconds()
        XCTAssertGreaterThan(first, 0)
        XCTAssertGreaterThanOrEqual(SystemdNotify.monotonicMicroseconds(), first)
    }

    func testAddressesMustBeAbsoluteOrAbstractAndFit() {
        XCTAssertNoThrow(try SystemdNotify(socketAddress: "/run/systemd/notify"))
        XCTAssertNoThrow(try SystemdNotify(socketAddress: "@/org/freedesktop/systemd1/notify/123"))
        XCTAssertThrowsError(try SystemdNotify(socketAddress: "run/notify"))
        XCTAssertThrowsError(try SystemdNotify(socketAddress: "@"))
        XCTAssertThrowsError(try SystemdNotify(socketAddress: "/" + String(repeating: "x", count: 107)))
        XCTAssertNoThrow(try SystemdNotify(socketAddress: "/" + String(repeating: "x", count: 106)))
        XCTAssertNoThrow(try SystemdNotify(socketAddress: "@" + String(repeating: "x", count: 107)))
    }

    func testDatagramReachesAPathSocket() throws {
        let directory = String(cString: mkdtemp(strdup("/tmp/kernel-notify-XXXXXX")))
        defer { rmdir(directory) }
        let path = directory + "/notify"
        let receiver = try DatagramReceiver(address: path)
        defer { receiver.close(); unlink(path) }
        try SystemdNotify(socketAddress: path).send([.ready, .mainPID(7)])
        XCTAssertEqual(try receiver.receive(), "READY=1\nMAINPID=7")
    }

    func testDatagramReachesAnAbstractSocket() throws {
        let name = "@kernel-notify-test-\(getpid())"
        let receiver = try DatagramReceiver(address: name)
        defer { receiver.close() }
        try SystemdNotify(socketAddress: name).send([.stopping])
        XCTAssertEqual(try receiver.receive(), "STOPPING=1")
    }

    func testNoListenerIsAnError() throws {
        XCTAssertThrowsError(try SystemdNotify(socketAddress: "@kernel-notify-nobody-\(getpid())").send([.ready])) { error in
            XCTAssertTrue("\(error)".hasPrefix("sendto() \"@kernel-notify-nobody-"), "\(error)")
        }
    }
}

/// A bound unix datagram socket, as systemd's notify socket is; `@name` is in the abstract namespace.
private struct DatagramReceiver {
    let fd: Int32

    init(address: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var storage = sockaddr_un()
        storage.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(address.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &storage.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count + (abstract ? 0 : 1))
        let bound = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else { throw SystemdNotify.SystemCallError(call: "bind()", errno: errno) }
    }

    func receive() throws -> String {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        guard count >= 0 else { throw SystemdNotify.SystemCallError(call: "recv()", errno: errno) }
        return String(decoding: buffer[..<count], as: UTF8.self)
    }

    func close() { _ = Glibc.close(fd) }
}
