package org.roiseg.client;

import java.net.URI;
import java.net.URISyntaxException;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Set;

/**
 * Where a client connects: one server, a list of servers, or a DNS name standing for several, as
 * the Python client reads it ({@code roiseg.client.targets}).
 *
 * <ul>
 *   <li>{@code host:port} (or {@code host}, port {@value RoisegClient#DEFAULT_PORT};
 *       {@code [v6]:port} for an IPv6 address): one server;</li>
 *   <li>{@code host1:port1,host2:port2,...}: several servers;</li>
 *   <li>{@code dns:///name:port}: every address the name resolves to, looked up again as it
 *       changes (a Kubernetes headless Service).</li>
 * </ul>
 *
 * <p>Calls to several servers are spread by gRPC's round_robin policy over the servers whose
 * health check reports SERVING; see {@link RoisegClient}.
 *
 * @param text      the target as given
 * @param addresses the servers as host and port (one for a DNS name: the name and its port)
 * @param dns       whether the addresses come from a DNS name, looked up by gRPC
 */
public record ServerTarget(String text, List<HostPort> addresses, boolean dns) {

    /** What to write, for error messages and hints. */
    public static final String HINT = "write a server as host:port, several as host1:port1,host2:port2, "
            + "or a DNS name for several as dns:///name:port";

    /** A server's host name or IP address (without brackets) and port. */
    public record HostPort(String host, int port) {

        /** host:port, with an IPv6 address in brackets. */
        @Override
        public String toString() {
            return (host.contains(":") ? "[" + host + "]" : host) + ":" + port;
        }
    }

    /** Copies the address list. */
    public ServerTarget {
        addresses = List.copyOf(addresses);
    }

    /**
     * Reads a target; entries without a port get {@value RoisegClient#DEFAULT_PORT}.
     *
     * @throws IllegalArgumentException with a message for the user when it is malformed
     */
    public static ServerTarget parse(String text) {
        return parse(text, RoisegClient.DEFAULT_PORT);
    }

    /**
     * Reads a target; entries without a port get {@code defaultPort}.
     *
     * @throws IllegalArgumentException with a message for the user when it is malformed
     */
    public static ServerTarget parse(String text, int defaultPort) {
        String t = text == null ? "" : text.strip();
        if (t.isEmpty()) {
            throw new IllegalArgumentException("No server given: " + HINT + ".");
        }
        if (t.startsWith("dns:")) {
            if (!t.startsWith("dns:///") || t.contains(",")) {
                throw new IllegalArgumentException("\"" + t + "\" is not a DNS target: write dns:///name:port.");
            }
            return new ServerTarget(t, List.of(hostPort(t.substring("dns:///".length()), defaultPort)), true);
        }
        if (t.contains("://")) {
            throw new IllegalArgumentException("\"" + t + "\" is not a host:port, a list of them or dns:///name:port "
                    + "(leave out http:// and the like): " + HINT + ".");
        }
        Set<HostPort> addresses = new LinkedHashSet<>();
        for (String entry : t.split(",", -1)) {
            addresses.add(hostPort(entry, defaultPort));
        }
        return new ServerTarget(t, new ArrayList<>(addresses), false);
    }

    /** One server at {@code host:port}. */
    public static ServerTarget of(String host, int port) {
        return parse(new HostPort(host, port).toString());
    }

    /**
     * {@code host:port}, {@code [v6]:port}, {@code host} or a bare IPv6 address; the port defaults to
     * {@code defaultPort}.
     *
     * @throws IllegalArgumentException when it is not a server address
     */
    public static HostPort hostPort(String entry, int defaultPort) {
        String e = entry.strip();
        String host;
        String port;
        if (e.startsWith("[")) {
            int close = e.indexOf(']');
            String rest = close < 0 ? "" : e.substring(close + 1);
            if (close < 0 || !(rest.isEmpty() || rest.startsWith(":"))) {
                throw new IllegalArgumentException("\"" + e + "\" is not [IPv6 address]:port.");
            }
            host = e.substring(1, close);
            port = rest.isEmpty() ? "" : rest.substring(1);
        } else if (e.indexOf(':') != e.lastIndexOf(':')) {
            host = e; // a bare IPv6 address
            port = "";
        } else {
            int colon = e.indexOf(':');
            host = colon < 0 ? e : e.substring(0, colon);
            port = colon < 0 ? "" : e.substring(colon + 1);
        }
        boolean badHost = host.isEmpty() || host.chars().anyMatch(c -> Character.isWhitespace(c) || "/[]@".indexOf(c) >= 0)
                || (host.contains(":") && !host.matches("[0-9A-Fa-f:.%]+"));
        if (badHost) {
            throw new IllegalArgumentException("\"" + e + "\" is not a server address: " + HINT + ".");
        }
        if (port.isEmpty()) {
            return new HostPort(host, defaultPort);
        }
        if (!port.matches("[0-9]{1,5}") || Integer.parseInt(port) < 1 || Integer.parseInt(port) > 65535) {
            throw new IllegalArgumentException("The port in \"" + e + "\" must be a number from 1 to 65535.");
        }
        return new HostPort(host, Integer.parseInt(port));
    }

    /** Whether calls may go to more than one server (a list, or a DNS name). */
    public boolean several() {
        return dns || addresses.size() > 1;
    }

    /** Whether every server is this computer (names other than localhost are not looked up). */
    public boolean loopback() {
        return addresses.stream().allMatch(a -> isLoopback(a.host()));
    }

    /** The target gRPC dials: {@code dns:///name:port}, or the address list's own scheme. */
    String channelTarget() {
        if (dns || addresses.size() == 1) {
            return "dns:///" + addresses.get(0);
        }
        try {
            return new URI(AddressListNameResolverProvider.SCHEME, "", "/" + this, null, null).toASCIIString();
        } catch (URISyntaxException e) {
            throw new IllegalArgumentException("\"" + text + "\" is not a server list: " + HINT + ".", e);
        }
    }

    /** The target with every port written out: {@code host:port}, a list of them, or {@code dns:///name:port}. */
    @Override
    public String toString() {
        List<String> written = addresses.stream().map(HostPort::toString).toList();
        return (dns ? "dns:///" : "") + String.join(",", written);
    }

    static boolean isLoopback(String host) {
        String h = host.toLowerCase(Locale.ROOT);
        if (h.equals("localhost")) {
            return true;
        }
        if (!h.contains(":") && !h.matches("[0-9.]+")) {
            return false;
        }
        try {
            return java.net.InetAddress.getByName(h).isLoopbackAddress();
        } catch (java.net.UnknownHostException e) {
            return false;
        }
    }
}
