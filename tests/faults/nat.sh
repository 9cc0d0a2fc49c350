#!/usr/bin/env bash
# NAT traversal with examples/relayed.rs: a relay on a "public" segment and
# two peers, each behind its own masquerading NAT router, in five network
# namespaces:
#
#   peer A 192.168.1.2 --lan-- nat1 192.168.1.1 | 10.200.0.2 --+
#                                                              br0 -- relay 10.200.0.1
#   peer B 192.168.2.2 --lan-- nat2 192.168.2.1 | 10.200.0.3 --+
#
# The relay (namespace pub, which also holds the bridge) listens on
# /ip4/10.200.0.1/tcp/4001; the listener runs on peer A, reserves a slot and
# prints its circuit address; the dialer runs on peer B, dials that address,
# sends three strings through the circuit, then a 256 KiB value, more than a
# relayed connection carries: it goes only once dcutr has punched a direct
# connection through both NATs, else it fails as relayed_limit after 5 s.
#
# Each NAT router masquerades what leaves its WAN interface (nftables, or
# iptables when nft is missing) and drops new connections coming in from
# the WAN, as a home router does. Variants, each on a fresh topology:
#
#   masquerade     plain masquerade: Linux keeps the source port when it is
#                  free, so a peer's mapping is the same for every
#                  destination (endpoint-independent in practice)
#   persistent     masquerade persistent (same address for a client; with
#                  one WAN address it changes nothing)
#   random         masquerade random: the mapped port is randomised per
#                  connection (address- and port-dependent mapping)
#   fully-random   masquerade fully-random: the same, via prandom
#   rst            plain masquerade, but the routers answer unsolicited SYNs
#                  from the WAN with a RST instead of dropping them
#
# For each: do the strings cross the relay, does dcutr punch a direct
# connection (and how long after the relayed one), what becomes of the large
# value. What counts is what the listener saw: the dialer's relayed
# connection, then a direct connection with the same peer. Each router's
# conntrack events show the punched connection established through both
# NATs, and the ports each NAT mapped.
#
# Expected: masquerade and persistent punch through within a few ms (no
# latency here: netem is not in every kernel); random and fully-random do
# not (the port a peer's punch leaves from is not the one identify saw) and
# the large value fails after 5 s; rst is a race, mostly lost (a SYN that
# arrives before the other side's has left is answered with a RST).
#
# Needs root, iproute2, nft or iptables (apt-get install nftables; conntrack
# for the events, else only the table in /proc), a kernel with netfilter NAT
# and conntrack, and cargo to build examples/relayed (release) unless
# RELAYED_BIN names a binary. Creates the namespaces nt<pid>{pub,n1,n2,a,b}
# and removes them, and the processes it started, on exit. Without root,
# network namespaces, NAT or the binary it prints why it skipped and exits
# 0.
#
# NAT_VARIANTS="masquerade random" runs only those; NAT_FW=iptables uses
# iptables even when nft is there; RELAYED_BIN=/path uses that binary;
# NAT_KEEP=1 keeps the processes' output (kept anyway when a check fails);
# RUST_LOG is passed on to the processes (their stderr).
#
# Exits 1 if a variant's three strings do not all come back, the relay
# accepted no circuit, conntrack shows no masqueraded connection, a variant
# does not end as expected, or a direct connection is not in both routers'
# conntrack.
set -euo pipefail

skip() {
    echo "nat traversal skipped: $*"
    exit 0
}

[[ $(uname -s) == Linux ]] || skip "needs Linux network namespaces"
[[ $(id -u) == 0 ]] || skip "needs root (network namespaces, nftables)"
command -v ip >/dev/null || skip "needs iproute2 (ip)"
if [[ -n ${NAT_FW:-} ]]; then
    FW=$NAT_FW
    command -v "$FW" >/dev/null || skip "NAT_FW=$FW is not installed"
elif command -v nft >/dev/null; then
    FW=nft
elif command -v iptables >/dev/null; then
    FW=iptables
else
    skip "needs nft or iptables for the NAT routers (apt-get install nftables)"
fi

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [[ -z ${RELAYED_BIN:-} ]]; then
    echo "building examples/relayed (release)"
    (cd "$ROOT" && cargo build --quiet --release --example relayed)
fi
BIN=${RELAYED_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/relayed}
[[ -x $BIN ]] || skip "no $BIN"

TAG=nt$$
NS_PUB=${TAG}pub
NS_N1=${TAG}n1
NS_N2=${TAG}n2
NS_A=${TAG}a
NS_B=${TAG}b
ALL_NS=("$NS_PUB" "$NS_N1" "$NS_N2" "$NS_A" "$NS_B")
RELAY_IP=10.200.0.1
WAN1=10.200.0.2
WAN2=10.200.0.3
PEER_A=192.168.1.2
PEER_B=192.168.2.2
RELAY_LISTEN=/ip4/$RELAY_IP/tcp/4001

# Network namespaces and NAT in them, or skip.
if ! ip netns add "${TAG}probe" 2>/dev/null; then
    skip "cannot create a network namespace here"
fi
if [[ $FW == nft ]]; then
    ip netns exec "${TAG}probe" nft "add table ip t; add chain ip t p { type nat hook postrouting priority srcnat; }; add rule ip t p masquerade" 2>/dev/null
else
    ip netns exec "${TAG}probe" iptables -t nat -A POSTROUTING -j MASQUERADE 2>/dev/null
fi || { ip netns del "${TAG}probe"; skip "no NAT with $FW in this kernel"; }
ip netns del "${TAG}probe"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nat-relayed.XXXXXX")
PIDS=()
FAILED=0

teardown() {
    local pid ns
    # Killed and reaped one by one, so that bash reports no "Killed" job.
    for pid in "${PIDS[@]}"; do
        { kill -9 "$pid" && wait "$pid"; } 2>/dev/null || true
    done
    PIDS=()
    for ns in "${ALL_NS[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
    done
}

cleanup() {
    local status=$?
    teardown
    if [[ ${NAT_KEEP:-0} == 1 || $FAILED == 1 ]]; then
        echo "output kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command in a namespace, in the foreground (a background one goes
# through `ip netns exec` directly: see run).
in_ns() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}

# A veth pair between two namespaces: link <ns1> <dev1> <ns2> <dev2>. Made
# directly in the namespaces, so the names cannot clash with the host's.
link() {
    ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
}

# The NAT rules of one router: nat_rules <ns> <masquerade options> <inbound
# policy: drop|rst>. With rst nothing filters: an unsolicited SYN reaches
# the router's own stack, which answers it with a RST.
nat_rules() {
    local ns=$1 opts=$2 inbound=$3
    case $FW in
    nft)
        in_ns "$ns" nft -f - <<EOF
table ip nat {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" masquerade $opts
    }
}
EOF
        if [[ $inbound == drop ]]; then
            in_ns "$ns" nft -f - <<EOF
table inet filter {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan0" ct state new drop
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "wan0" ct state new drop
    }
}
EOF
        fi
        ;;
    iptables)
        local args=()
        case $opts in
        "" | persistent) ;; # MASQUERADE has no --persistent (SNAT has)
        random) args=(--random) ;;
        fully-random) args=(--random-fully) ;;
        esac
        in_ns "$ns" iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE "${args[@]}"
        if [[ $inbound == drop ]]; then
            in_ns "$ns" iptables -A INPUT -i wan0 -m conntrack --ctstate NEW -j DROP
            in_ns "$ns" iptables -A FORWARD -i wan0 -m conntrack --ctstate NEW -j DROP
        fi
        ;;
    esac
}

# Builds the topology with the given masquerade options and inbound policy.
setup() {
    local opts=$1 inbound=$2 ns port
    for ns in "${ALL_NS[@]}"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done

    # The "internet": a bridge in pub, holding the relay's address.
    ip -n "$NS_PUB" link add br0 type bridge
    ip -n "$NS_PUB" addr add $RELAY_IP/24 dev br0
    ip -n "$NS_PUB" link set br0 up
    link "$NS_N1" wan0 "$NS_PUB" port1
    link "$NS_N2" wan0 "$NS_PUB" port2
    for port in port1 port2; do
        ip -n "$NS_PUB" link set "$port" master br0
        ip -n "$NS_PUB" link set "$port" up
    done

    # Each router: WAN on the bridge, LAN to its peer, forwarding on. No
    # route to the other LAN: private addresses do not cross the internet.
    link "$NS_N1" lan0 "$NS_A" eth0
    link "$NS_N2" lan0 "$NS_B" eth0
    ip -n "$NS_N1" addr add $WAN1/24 dev wan0
    ip -n "$NS_N1" addr add 192.168.1.1/24 dev lan0
    ip -n "$NS_N2" addr add $WAN2/24 dev wan0
    ip -n "$NS_N2" addr add 192.168.2.1/24 dev lan0
    ip -n "$NS_A" addr add $PEER_A/24 dev eth0
    ip -n "$NS_B" addr add $PEER_B/24 dev eth0
    for ns in "$NS_N1" "$NS_N2"; do
        ip -n "$ns" link set wan0 up
        ip -n "$ns" link set lan0 up
        in_ns "$ns" sysctl -qw net.ipv4.ip_forward=1
        nat_rules "$ns" "$opts" "$inbound"
    done
    ip -n "$NS_A" link set eth0 up
    ip -n "$NS_B" link set eth0 up
    ip -n "$NS_A" route add default via 192.168.1.1
    ip -n "$NS_B" route add default via 192.168.2.1
}

# Prefixes each line read with the time it arrived ($EPOCHREALTIME).
stamp() {
    local line
    while IFS= read -r line; do
        echo "$EPOCHREALTIME $line"
    done
}

# The rest of the first line of a stamped <file> starting with <prefix>
# (without its time stamp); empty when there is none.
after() {
    # The file may not be there yet: the process substitution makes it.
    sed -n "s/^[0-9.]* $2//p" "$1" 2>/dev/null | head -n 1
}

# When that line arrived: at <file> <prefix>.
at() {
    { grep -m 1 "^[0-9.]* $2" "$1" 2>/dev/null || true; } | cut -d' ' -f1
}

# Seconds between two times, in ms: ms <from> <to>.
ms() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f ms", (b - a) * 1000 }'
}

# Waits for a line starting with <prefix> in stamped <file>, prints the
# rest: wait_line <file> <prefix> <what> <err file>.
wait_line() {
    local file=$1 prefix=$2 what=$3 err=$4 line waited=0
    until line=$(after "$file" "$prefix") && [[ -n $line ]]; do
        sleep 0.1
        waited=$((waited + 1))
        if ((waited > 150)); then
            echo "  $what did not print \"$prefix\" within 15 s:" >&2
            tail -n 5 "$err" >&2
            return 1
        fi
    done
    echo "$line"
}

# The router's conntrack table (conntrack tool, else /proc).
ct_table() {
    if command -v conntrack >/dev/null; then
        in_ns "$1" conntrack -L -p tcp 2>/dev/null
    else
        in_ns "$1" cat /proc/net/nf_conntrack
    fi
}

# What a router's conntrack events say of its peer's connections to the
# other router's WAN address (the hole punch): ct_punch <events> <peer>
# <other WAN> <own WAN>. Prints "<SYNs out>|<the first established one, as
# peer:port -> other:port, mapped to own:port>"; the mapped port is the
# reply direction's destination port.
ct_punch() {
    awk -v from="src=$2 dst=$3 " -v own="$4" '
        function describe(   i, kv, v, c) {
            for (i = 1; i <= NF; i++)
                if (split($i, kv, "=") == 2) v[kv[1], ++c[kv[1]]] = kv[2]
            return v["src", 1] ":" v["sport", 1] " -> " v["dst", 1] ":" v["dport", 1] " mapped to " own ":" v["dport", 2]
        }
        index($0, from) && /\[NEW\]/ && !syns++ { first = describe() }
        index($0, from) && / ESTABLISHED / && !est { est = describe() }
        END { print syns + 0 "|" est "|" first }' "$1"
}

# punch_line <router> <SYNs> <peer> <other WAN> <established> <first>
punch_line() {
    local what="none established${6:+, the first: $6}"
    [[ -z $5 ]] || what="established $5"
    echo "  conntrack $1: $2 connection(s) from $3 to $4; $what"
}

ROWS=()
NOTES=()

# One variant: run <name> <masquerade options> <inbound policy> <expected:
# direct|relay|either>.
run() {
    local name=$1 opts=$2 inbound=$3 expect=$4 out=$WORK/$1
    local relay circuit dialer start end problems=() replies before_direct
    local t_relayed t_direct upgrade large claim first mapped
    local syn1='' syn2='' punch1 punch2 first1 first2
    mkdir -p "$out"
    local how="masquerade${opts:+ $opts}"
    [[ $FW == iptables && $opts == persistent ]] && how="MASQUERADE (iptables has no --persistent for it)"
    echo "== $name: $how, unsolicited inbound: $inbound ($FW)"
    setup "$opts" "$inbound"

    # The routers' conntrack events: the record of the hole punch (a table
    # snapshot is not: a late SYN can reopen a TIME_WAIT entry).
    if command -v conntrack >/dev/null; then
        ip netns exec "$NS_N1" conntrack -E -p tcp >"$out/ct-events-nat1.txt" 2>/dev/null &
        PIDS+=("$!")
        ip netns exec "$NS_N2" conntrack -E -p tcp >"$out/ct-events-nat2.txt" 2>/dev/null &
        PIDS+=("$!")
    fi

    # `ip netns exec` execs the program, so $! is the program itself (the
    # process substitution time-stamps its output). Not through in_ns: $!
    # would be the subshell running the function, and a kill would miss the
    # program.
    ip netns exec "$NS_PUB" "$BIN" relay --listen "$RELAY_LISTEN" \
        > >(stamp >"$out/relay.out") 2>"$out/relay.err" &
    PIDS+=("$!")
    relay=$(wait_line "$out/relay.out" "relay at " relay "$out/relay.err")
    echo "  relay at $relay"

    ip netns exec "$NS_A" "$BIN" listen --relay "$relay" --bind /ip4/0.0.0.0/tcp/0 \
        > >(stamp >"$out/listen.out") 2>"$out/listen.err" &
    PIDS+=("$!")
    circuit=$(wait_line "$out/listen.out" "reachable at " listener "$out/listen.err")
    echo "  listener (peer A) reachable at $circuit"

    # The listener reached the relay through nat1: conntrack holds the
    # masqueraded connection (private source; the reply goes to the WAN
    # address, to the port the first dport= after it names).
    if ct_table "$NS_N1" | grep -E "src=$PEER_A dst=$RELAY_IP .*dport=4001 .*src=$RELAY_IP dst=$WAN1 " >"$out/ct-relay.txt"; then
        first=$(head -n 1 "$out/ct-relay.txt")
        mapped="$(grep -o 'sport=[0-9]*' <<<"$first" | head -n 1 | cut -d= -f2) -> $(grep -o 'dport=[0-9]*' <<<"$first" | tail -n 1 | cut -d= -f2)"
        echo "  conntrack nat1: $PEER_A -> relay masqueraded as $WAN1 (port $mapped)"
    else
        problems+=("no masqueraded relay connection in nat1's conntrack")
    fi

    start=$EPOCHREALTIME
    in_ns "$NS_B" timeout 90 "$BIN" dial "$circuit" --bind /ip4/0.0.0.0/tcp/0 \
        > >(stamp >"$out/dial.out") 2>"$out/dial.err" || echo "  dialer exited with $?"
    end=$EPOCHREALTIME
    sleep 0.5
    sed -E 's/^[0-9.]+ /  [dialer] /' "$out/dial.out"
    grep -v ' reachable at ' "$out/listen.out" | sed -E 's/^[0-9.]+ /  [listener] /' | head -n 12
    [[ -s $out/dial.err && -z ${RUST_LOG:-} ]] && { echo "  dialer stderr:"; tail -n 5 "$out/dial.err" | sed 's/^/    /'; }

    # What happened, as the listener saw it: the dialer's relayed connection,
    # then (if dcutr punched one) a direct connection with the same peer. The
    # strings it received before the direct connection crossed the relay.
    replies=$(grep -c '^[0-9.]* reply ' "$out/dial.out" || true)
    dialer=$(after "$out/listen.out" "relayed connection with ")
    t_relayed=$(at "$out/listen.out" "relayed connection with ")
    t_direct=""
    [[ -n $dialer ]] && t_direct=$(at "$out/listen.out" "direct connection with $dialer")
    if [[ -n $t_direct ]]; then
        upgrade="direct $(ms "$t_relayed" "$t_direct") after the relayed one"
        before_direct=$(awk -v t="$t_direct" '$1 < t && / received "/' "$out/listen.out" | wc -l)
    else
        upgrade="no direct connection"
        before_direct=$(grep -c ' received "' "$out/listen.out" || true)
    fi
    large=$(after "$out/dial.out" "262144 bytes came back")
    if grep -q '^[0-9.]* 262144 bytes came back' "$out/dial.out"; then
        large="came back ($(ms "$start" "$(at "$out/dial.out" "262144 bytes came back")") after the dial)"
    else
        large=$(after "$out/dial.out" "the 262144-byte value: ")
        large=${large:+failed: }${large:-?}
    fi
    claim=$(after "$out/dial.out" "dcutr: ")
    if [[ -z $t_direct && $claim == direct* ]]; then
        NOTES+=("$name: the dialer printed \"dcutr: $claim\" but the listener saw no direct connection")
    fi

    # The hole punch as both routers' conntrack saw it.
    if [[ -f $out/ct-events-nat1.txt ]]; then
        IFS='|' read -r syn1 punch1 first1 < <(ct_punch "$out/ct-events-nat1.txt" "$PEER_A" "$WAN2" "$WAN1")
        IFS='|' read -r syn2 punch2 first2 < <(ct_punch "$out/ct-events-nat2.txt" "$PEER_B" "$WAN1" "$WAN2")
        punch_line nat1 "$syn1" A "$WAN2" "$punch1" "$first1"
        punch_line nat2 "$syn2" B "$WAN1" "$punch2" "$first2"
        if [[ -n $t_direct && (-z $punch1 || -z $punch2) ]]; then
            problems+=("a direct connection, but not established through both NATs")
        fi
    fi

    if ((replies < 3)); then
        problems+=("$replies of 3 replies")
        [[ -z $t_direct ]] || problems+=("stalled at the switch to the direct connection")
    fi
    grep -q 'CircuitReqAccepted' "$out/relay.out" || problems+=("the relay accepted no circuit")
    case $expect in
    direct)
        [[ -n $t_direct && $large == came* ]] || problems+=("expected a direct connection and the large value back")
        # No SYN left either router: dcutr never dialed. It sends the
        # candidates it had when the relayed connection came; with none (the
        # dialer's identify from the relay not back yet) the handshake fails
        # as NoAddresses, and the example does not print dcutr's events.
        [[ -n $t_direct || ${syn1:-0}${syn2:-0} != 00 ]] || problems+=("no hole punch tried")
        ;;
    relay) [[ -z $t_direct ]] || problems+=("expected no direct connection") ;;
    esac
    local verdict=ok
    if ((${#problems[@]} > 0)); then
        verdict="FAIL: $(printf '%s; ' "${problems[@]}")"
        verdict=${verdict%; }
        FAILED=1
    fi
    ROWS+=("$name|$replies/3, $before_direct via relay|$upgrade|$large|$(ms "$start" "$end")|$verdict")
    teardown
}

# name:masquerade options:inbound policy:expected. Plain masquerade keeps
# ports, so the address identify reports is the one a punched connection
# leaves from; random ports make it wrong. A router answering the other
# side's early SYN with a RST kills the attempt (either, as it is a race).
VARIANTS=(
    "masquerade::drop:direct"
    "persistent:persistent:drop:direct"
    "random:random:drop:relay"
    "fully-random:fully-random:drop:relay"
    "rst::rst:either"
)
for variant in "${VARIANTS[@]}"; do
    IFS=: read -r name opts inbound expect <<<"$variant"
    if [[ -n ${NAT_VARIANTS:-} && " $NAT_VARIANTS " != *" $name "* ]]; then
        continue
    fi
    run "$name" "$opts" "$inbound" "$expect"
done

echo
{
    echo "variant|strings back|A<->B as the listener saw it|256 KiB value|dialer ran|check"
    printf '%s\n' "${ROWS[@]}"
} | awk -F'|' '
    { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } }
    END {
        for (r = 1; r <= NR; r++) {
            line = ""
            for (i = 1; i < NF; i++) line = line sprintf("%-" w[i] "s | ", cell[r, i])
            print line cell[r, NF]
        }
    }'
((${#NOTES[@]} == 0)) || { echo; printf '%s\n' "${NOTES[@]}"; }
exit $FAILED
