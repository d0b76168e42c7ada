/// What one kernel process does; chosen with `--role`.
public enum KernelRole: String, Sendable, CaseIterable, CustomStringConvertible {
    /// HTTP in, routes, balances across workers, adds CORS headers.
    case edge
    /// uwsgi and/or HTTP in, runs models.
    case worker
    /// Both in one process: the edge calls local models without a socket hop.
    case both

    public var description: String { rawValue }

    /// Roles a module is offered for when it declares `role`; `both` runs edge and worker modules.
    public func runs(_ moduleRoles: Set<KernelRole>) -> Bool {
        if moduleRoles.contains(self) { return true }
        return self == .both && (moduleRoles.contains(.edge) || moduleRoles.contains(.worker))
    }
}
