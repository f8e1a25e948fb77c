package iterable_test

import (
	"context"
	"fmt"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

// Pack the users, send each batch, and map the outcome back to the rows by Record.Index.
func ExampleClient_SendBatch() {
	emu := iterabletest.NewServer(iterabletest.Options{Unlimited: true})
	defer emu.Close()
	emu.AddProject("api-key", iterabletest.ProjectEmail)

	client, err := iterable.New(iterable.Config{BaseURL: emu.URL(), APIKey: "api-key", Budgets: iterable.NewBudgets()})
	if err != nil {
		panic(err)
	}
	plan, _ := iterable.Value(int32(3))
	records := []iterable.Record{
		{Index: 10, User: iterable.User{Email: "ada@example.com", DataFields: map[string]any{"plan": plan}}},
		{Index: 11, User: iterable.User{Email: "not-an-email"}},
	}
	batches, oversize, err := client.Pack(records, true)
	if err != nil {
		panic(err)
	}
	fmt.Println("oversize:", len(oversize))
	for _, b := range batches {
		res, err := client.SendBatch(context.Background(), b)
		if err != nil {
			panic(err) // a fatal error: pause the activation
		}
		fmt.Println("accepted:", res.Accepted)
		for _, r := range res.Rejected {
			fmt.Println("rejected:", r.Index, r.Category)
		}
	}
	// Output:
	// oversize: 0
	// accepted: [10]
	// rejected: 11 invalidEmails
}
