package mosquitto

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Reload asks the Mosquitto whose pid is in pidFile to re-read its password
// and ACL files, by sending it SIGHUP. Mosquitto reloads asynchronously, from
// its main loop: a client connecting right after Reload returns may still be
// checked against the old files. On reload Mosquitto also disconnects clients
// whose username is no longer in the password file.
//
// Sending the signal needs the same user as Mosquitto, or CAP_KILL.
func Reload(pidFile string) error {
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		return fmt.Errorf("reload mosquitto: read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 0 {
		return fmt.Errorf("reload mosquitto: pid file %s holds %q, not a process id", pidFile, strings.TrimSpace(string(raw)))
	}
	if err := checkIsMosquitto(pid); err != nil {
		return fmt.Errorf("reload mosquitto: pid %d from %s: %w", pid, pidFile, err)
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		return fmt.Errorf("reload mosquitto: find pid %d from %s: %w", pid, pidFile, err)
	}
	if err := proc.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload mosquitto: SIGHUP to pid %d from %s (this process needs Mosquitto's user or CAP_KILL): %w", pid, pidFile, err)
	}
	return nil
}

// checkIsMosquitto refuses a pid that is not a running mosquitto, where /proc
// tells: a pid file left behind by a crash can name an unrelated process by
// now, and SIGHUP ends most programs.
func checkIsMosquitto(pid int) error {
	if _, err := os.Stat("/proc/self/comm"); err != nil {
		return nil // no procfs: nothing to check against
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if errors.Is(err, fs.ErrNotExist) {
		return errors.New("no such process: is Mosquitto running, or is the pid file stale?")
	}
	if err != nil {
		return err
	}
	if name := strings.TrimSpace(string(comm)); name != "mosquitto" {
		return fmt.Errorf("process is %q, not mosquitto: is the pid file stale?", name)
	}
	return nil
}
