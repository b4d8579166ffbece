// Package benchpeer measures the cells runtime against its peers in the same run: wazero
// running the same modules in-process, and a fresh process per event (cmd/oneshot, the
// container-per-task design). It holds only benchmarks; docs/benchmarks.md has the command
// and the numbers. wazero is imported from the _test.go files only, never by the agent.
package benchpeer
