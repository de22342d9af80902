"""The bundled sample app that ``holdover demo`` runs behind the gateway."""
