"""What a proxy must do for DorkOS: the contract's properties, and the checks
that need only DorkOS's own behaviour.
"""
