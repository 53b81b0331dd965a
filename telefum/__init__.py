"""telefum-bridge service shell: configuration, CLI and web endpoints.

Wires ``telephony`` (the PBX side), ``crm_client`` (the CRM side) and ``worker`` (the
durable pipeline between them). Those three never import this package.
"""

__version__ = "0.1.0"
