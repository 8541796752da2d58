#!/bin/sh
# Prepares a backend for xlb's direct server return (`forwarding = "dsr"`): the balancer
# hands the backend its clients' packets unchanged, still addressed to the VIP, so the
# backend must take the VIP as its own (on the loopback) without claiming it on the network
# (the routers send the VIP's packets to the balancers, never to a backend).
#
#   arp_ignore = 1    answer ARP only for addresses of the interface it arrives on (so not
#                     for the VIP on lo);
#   arp_announce = 2  never use the VIP as the source of an ARP request.
#
# IPv6 needs no switch: a node answers neighbour solicitations only for addresses of the
# interface they arrive on. The backend's own address stays its health checks' target, and
# its services must listen on the VIP's port (or on every address).
#
# Usage, as root on each backend: dsr-backend.sh VIP [VIP...]
# Not persistent: run it at boot (or put the same in your network configuration).
set -eu
if [ $# -lt 1 ]; then
  echo "usage: $0 VIP [VIP...]" >&2
  exit 2
fi
sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
for vip in "$@"; do
  case $vip in
    *:*) ip -6 address replace "$vip/128" dev lo nodad ;;
    *) ip address replace "$vip/32" dev lo ;;
  esac
  echo "VIP $vip on lo"
done
