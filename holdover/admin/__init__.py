"""The admin side: one definition per command (``commands``), served as a JSON API
(``server``) on ``admin_listen`` and called by the CLI (``client``)."""
