"""unattend.xml for generalized images, and the first-boot script for images that were not generalized.

A generalized image (ImageState IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE) runs the specialize pass and
OOBE on first boot; they would overwrite an offline-set computer name, so the name (and static IP)
go into ``Windows\\Panther\\unattend.xml``, which Setup reads first.

An image that was not generalized never reads unattend.xml. Its static IP is applied by
``Windows\\Setup\\Scripts\\fleetcast-firstboot.cmd``, which Winlogon runs once as SYSTEM before the logon
screen (``HKLM\\SYSTEM\\Setup`` CmdLine + SetupType 2); the script finds the adapter by its MAC address,
sets the address, gateway and DNS servers, installs staged drivers, then clears CmdLine/SetupType.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from fleetcast.errors import UsageError

_MAC_RE = re.compile(r"^([0-9A-Fa-f]{2})([:-]?)([0-9A-Fa-f]{2})(?:\2([0-9A-Fa-f]{2})){4}$")
ARCHES = ("amd64", "x86", "arm64")
FIRSTBOOT_SCRIPT = "Windows/Setup/Scripts/fleetcast-firstboot.cmd"
FIRSTBOOT_COMMAND = "cmd.exe /c %SystemRoot%\\Setup\\Scripts\\fleetcast-firstboot.cmd"
STAGED_DRIVERS = "Windows/fleetcast/drivers"


def parse_mac(text: str) -> str:
    """``aa:bb:cc:dd:ee:ff`` (or with dashes, or none) -> ``AA-BB-CC-DD-EE-FF`` (Windows' form)."""
    digits = re.sub(r"[:-]", "", text.strip())
    if not _MAC_RE.match(text.strip()) or len(digits) != 12:
        raise UsageError(f"malformed MAC address {text!r}: expected six hex pairs, e.g. 52:54:00:12:34:56")
    return "-".join(digits[i : i + 2].upper() for i in range(0, 12, 2))


@dataclass(frozen=True)
class StaticIp:
    interface: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...]
    mac: str  # AA-BB-CC-DD-EE-FF

    @classmethod
    def parse(
        cls, ip: str, gateway: str | None, dns: tuple[str, ...] | list[str], mac: str | None
    ) -> StaticIp:
        if "/" not in ip:
            raise UsageError(f"IP address {ip!r} has no prefix length: expected CIDR, e.g. 10.0.0.101/24")
        try:
            iface = ipaddress.IPv4Interface(ip)
        except ValueError as exc:
            raise UsageError(f"malformed IP address {ip!r}: expected IPv4 CIDR, e.g. 10.0.0.101/24") from exc
        if mac is None:
            raise UsageError(
                "a static IP needs --mac: Windows applies it to the adapter with that MAC address"
            )
        gw = None
        if gateway:
            try:
                gw = ipaddress.IPv4Address(gateway)
            except ValueError as exc:
                raise UsageError(f"malformed gateway {gateway!r}: expected an IPv4 address") from exc
            if gw not in iface.network:
                raise UsageError(f"gateway {gw} is not in the network {iface.network} of {ip}")
        servers = []
        for d in dns:
            for part in [p for p in d.split(",") if p]:
                try:
                    servers.append(ipaddress.IPv4Address(part))
                except ValueError as exc:
                    raise UsageError(f"malformed DNS server {part!r}: expected an IPv4 address") from exc
        return cls(iface, gw, tuple(servers), parse_mac(mac))


@dataclass(frozen=True)
class UnattendOptions:
    name: str | None = None
    ip: StaticIp | None = None
    timezone: str | None = None
    locale: str | None = None
    admin_password: str | None = None
    join_domain: str | None = None
    join_user: str | None = None
    join_password: str | None = None
    join_ou: str | None = None
    skip_oobe: bool = False
    arch: str = "amd64"
    run_firstboot: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def _component(name: str, arch: str, body: list[str]) -> list[str]:
    head = (
        f'    <component name="{name}" processorArchitecture="{arch}" publicKeyToken="31bf3856ad364e35" '
        'language="neutral" versionScope="nonSxS" '
        'xmlns:wcm="http://schemas.microsoft.com/WMIConfig/2002/State" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    )
    return [head, *("      " + line for line in body), "    </component>"]


def _tcpip(ip: StaticIp) -> list[str]:
    # Interface children in the documented order: Ipv4Settings, Ipv6Settings, Identifier,
    # UnicastIpAddresses, Routes.
    body = [
        "<Interfaces>",
        '  <Interface wcm:action="add">',
        "    <Ipv4Settings>",
        "      <DhcpEnabled>false</DhcpEnabled>",
        "    </Ipv4Settings>",
        f"    <Identifier>{ip.mac}</Identifier>",
        "    <UnicastIpAddresses>",
        f'      <IpAddress wcm:action="add" wcm:keyValue="1">{ip.interface.with_prefixlen}</IpAddress>',
        "    </UnicastIpAddresses>",
    ]
    if ip.gateway is not None:
        body += [
            "    <Routes>",
            '      <Route wcm:action="add">',
            "        <Identifier>0</Identifier>",
            f"        <NextHopAddress>{ip.gateway}</NextHopAddress>",
            "        <Prefix>0.0.0.0/0</Prefix>",
            "      </Route>",
            "    </Routes>",
        ]
    body += ["  </Interface>", "</Interfaces>"]
    return body


def _dns(ip: StaticIp) -> list[str]:
    body = ["<Interfaces>", '  <Interface wcm:action="add">', f"    <Identifier>{ip.mac}</Identifier>"]
    body.append("    <DNSServerSearchOrder>")
    for i, server in enumerate(ip.dns, 1):
        body.append(f'      <IpAddress wcm:action="add" wcm:keyValue="{i}">{server}</IpAddress>')
    body += ["    </DNSServerSearchOrder>", "  </Interface>", "</Interfaces>"]
    return body


def render(opts: UnattendOptions) -> str:
    """The answer file: specialize (name, time zone, TCP/IP, DNS, domain join) and oobeSystem
    (locale, OOBE pages, administrator password)."""
    if opts.arch not in ARCHES:
        raise UsageError(f"unknown architecture {opts.arch!r}: expected one of {', '.join(ARCHES)}")
    a = opts.arch
    spec: list[str] = []
    shell: list[str] = []
    if opts.name:
        shell.append(f"<ComputerName>{escape(opts.name)}</ComputerName>")
    if opts.timezone:
        shell.append(f"<TimeZone>{escape(opts.timezone)}</TimeZone>")
    if shell:
        spec += _component("Microsoft-Windows-Shell-Setup", a, shell)
    if opts.ip is not None:
        spec += _component("Microsoft-Windows-TCPIP", a, _tcpip(opts.ip))
        if opts.ip.dns:
            spec += _component("Microsoft-Windows-DNS-Client", a, _dns(opts.ip))
    if opts.join_domain:
        if not (opts.join_user and opts.join_password):
            raise UsageError("--join-domain needs --join-user and --join-password")
        join = [
            "<Identification>",
            "  <Credentials>",
            f"    <Domain>{escape(opts.join_domain)}</Domain>",
            f"    <Password>{escape(opts.join_password)}</Password>",
            f"    <Username>{escape(opts.join_user)}</Username>",
            "  </Credentials>",
            f"  <JoinDomain>{escape(opts.join_domain)}</JoinDomain>",
        ]
        if opts.join_ou:
            join.append(f"  <MachineObjectOU>{escape(opts.join_ou)}</MachineObjectOU>")
        join.append("</Identification>")
        spec += _component("Microsoft-Windows-UnattendedJoin", a, join)
    if opts.run_firstboot:
        spec += _component(
            "Microsoft-Windows-Deployment",
            a,
            [
                "<RunSynchronous>",
                '  <RunSynchronousCommand wcm:action="add">',
                "    <Order>1</Order>",
                f"    <Path>{escape(FIRSTBOOT_COMMAND)}</Path>",
                "  </RunSynchronousCommand>",
                "</RunSynchronous>",
            ],
        )
    oobe: list[str] = []
    intl: list[str] = []
    if opts.locale:
        loc = escape(opts.locale)
        intl = [
            f"<InputLocale>{loc}</InputLocale>",
            f"<SystemLocale>{loc}</SystemLocale>",
            f"<UILanguage>{loc}</UILanguage>",
            f"<UserLocale>{loc}</UserLocale>",
        ]
        oobe += _component("Microsoft-Windows-International-Core", a, intl)
    oshell: list[str] = []
    if opts.skip_oobe:
        oshell += [
            "<OOBE>",
            "  <HideEULAPage>true</HideEULAPage>",
            "  <HideOEMRegistrationScreen>true</HideOEMRegistrationScreen>",
            "  <HideOnlineAccountScreens>true</HideOnlineAccountScreens>",
            "  <HideWirelessSetupInOOBE>true</HideWirelessSetupInOOBE>",
            "  <ProtectYourPC>3</ProtectYourPC>",
            "</OOBE>",
        ]
    if opts.admin_password is not None:
        oshell += [
            "<UserAccounts>",
            "  <AdministratorPassword>",
            f"    <Value>{escape(opts.admin_password)}</Value>",
            "    <PlainText>true</PlainText>",
            "  </AdministratorPassword>",
            "</UserAccounts>",
        ]
    if opts.timezone:
        oshell.append(f"<TimeZone>{escape(opts.timezone)}</TimeZone>")
    if oshell:
        oobe += _component("Microsoft-Windows-Shell-Setup", a, oshell)
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<unattend xmlns="urn:schemas-microsoft-com:unattend">',
    ]
    if spec:
        lines += ['  <settings pass="specialize">', *spec, "  </settings>"]
    if oobe:
        lines += ['  <settings pass="oobeSystem">', *oobe, "  </settings>"]
    lines.append("</unattend>")
    return "\n".join(lines) + "\n"


def firstboot_script(ip: StaticIp | None, *, drivers: bool, reset_setup: bool) -> str:
    """The .cmd run once at first boot (CRLF line ends; plain ASCII)."""
    lines = [
        "@echo off",
        "rem fleetcast first-boot script: applies what could not be set offline, then removes its hook",
        "set LOG=%SystemRoot%\\Setup\\Scripts\\fleetcast-firstboot.log",
        "echo %DATE% %TIME% fleetcast first boot >> %LOG%",
    ]
    if drivers:
        lines += [
            f"pnputil.exe /add-driver %SystemRoot%\\{STAGED_DRIVERS[8:].replace('/', chr(92))}\\*.inf "
            "/subdirs /install >> %LOG% 2>&1",
            "if errorlevel 1 pnputil.exe -i -a %SystemRoot%\\fleetcast\\drivers\\*.inf >> %LOG% 2>&1",
        ]
    if ip is not None:
        mac = ip.mac
        prefix = ip.interface.network.prefixlen
        gw = f" -DefaultGateway {ip.gateway}" if ip.gateway else ""
        dns = ",".join(f"'{d}'" for d in ip.dns)
        ps = (
            "$ErrorActionPreference='Stop'; "
            "for ($i=0; $i -lt 60; $i++) { "
            f"$a = Get-NetAdapter | Where-Object {{ $_.MacAddress -eq '{mac}' }}; "
            "if ($a) { break }; Start-Sleep -Seconds 2 }; "
            f"if (-not $a) {{ throw 'no adapter with MAC {mac}' }}; "
            "Set-NetIPInterface -InterfaceIndex $a.ifIndex -Dhcp Disabled; "
            "Get-NetIPAddress -InterfaceIndex $a.ifIndex -AddressFamily IPv4 -ErrorAction SilentlyContinue "
            "| Remove-NetIPAddress -Confirm:$false; "
            f"New-NetIPAddress -InterfaceIndex $a.ifIndex -IPAddress {ip.interface.ip} "
            f"-PrefixLength {prefix}{gw}"
        )
        if ip.dns:
            ps += f"; Set-DnsClientServerAddress -InterfaceIndex $a.ifIndex -ServerAddresses {dns}"
        netmask = ip.interface.network.netmask
        lines += [
            f'powershell.exe -NoProfile -ExecutionPolicy Bypass -Command "{ps}" >> %LOG% 2>&1',
            "if not errorlevel 1 goto ipdone",
            "rem Windows 7: no NetTCPIP module; find the connection name by MAC with wmic, set it with netsh",
            f'for /f "tokens=2 delims==" %%N in (\'wmic nic where "MACAddress=\'{mac.replace("-", ":")}\'" '
            'get NetConnectionID /value ^| find "="\') do set NIC=%%N',
            f'netsh interface ipv4 set address name="%NIC%" static {ip.interface.ip} {netmask} '
            f"{ip.gateway or 'none'} >> %LOG% 2>&1",
        ]
        for i, d in enumerate(ip.dns):
            verb = "set dnsservers" if i == 0 else "add dnsservers"
            extra = " static" if i == 0 else ""
            lines.append(f'netsh interface ipv4 {verb} name="%NIC%"{extra} {d} >> %LOG% 2>&1')
        lines.append(":ipdone")
    if reset_setup:
        lines += [
            'reg.exe add "HKLM\\SYSTEM\\Setup" /v CmdLine /t REG_SZ /d "" /f >> %LOG% 2>&1',
            'reg.exe add "HKLM\\SYSTEM\\Setup" /v SetupType /t REG_DWORD /d 0 /f >> %LOG% 2>&1',
        ]
    lines.append("exit /b 0")
    return "\r\n".join(lines) + "\r\n"
