"""The plugin layer, the lowest of the zoo: what a component is (:mod:`.contract`), the hooks that
register components (:mod:`.hookspecs`), their discovery through entry points (:mod:`.registry`),
and the package scaffold of ``zoo new-plugin`` (:mod:`.scaffold`). It imports nothing above it."""
