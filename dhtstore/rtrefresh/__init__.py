"""Routing-table refresh (go-libp2p-kad-dht's ``rtrefresh``): who enters the table, who
leaves it, and keeping it full. ``upkeep.TableUpkeep`` is the one implementation."""
